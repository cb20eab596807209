"""Errors about what the user gave us, as opposed to bugs.

A path, a model name, a config value or a data file that is wrong raises a subclass of `InputError`
(mixed with the usual built-in type, e.g. ``DataRootError(InputError, FileNotFoundError)``, so callers
that catch ``FileNotFoundError`` or ``ValueError`` keep working). Its message names the bad value and
what is allowed. The `sage` command prints such an error as one line instead of a traceback (set
``SAGE_TRACEBACK=1`` to see the traceback too); any other exception keeps its traceback.
"""

from __future__ import annotations

import argparse


class InputError(Exception):
    """Marker base class: the user's input is wrong, and the message says what to change."""


class UsageError(InputError, ValueError):
    """A command-line argument the parser refuses."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose refusals are one `UsageError` line (``sage experiment``, ``sage view``) instead of
    the usage block and an error line."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")
