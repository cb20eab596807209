"""Path settings checked before any work: output folders writable, names plain, checkpoints readable.

Kept free of heavy imports: `sage view` and `sage experiment` use them too.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from sage.errors import InputError


class PathError(InputError, ValueError):
    """A path setting that cannot work (missing, not writable, not a checkpoint)."""


def check_writable_dir(key: str, value) -> None:
    """A folder that exists and is writable, or can be created (its nearest existing parent is)."""
    if value is None:
        return
    path = Path(str(value)).expanduser().absolute()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise PathError(f"{key}={str(value)!r} cannot be a folder: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PathError(f"{key}={str(value)!r} is not writable ({probe}): choose a folder you can write to")


def check_file_name(key: str, value) -> None:
    if not value or "/" in str(value) or str(value) in (".", ".."):
        raise PathError(f"{key}={value!r} must be a plain file or folder name (it goes inside the run folder)")


def check_checkpoint_file(key: str, value) -> None:
    """An existing, readable file written by `torch.save` (a zip archive holding ``data.pkl``)."""
    if value is None or str(value) in ("last", "best", "hpc", "registry"):
        return
    path = Path(str(value))
    if not path.exists():
        raise PathError(f"{key}={str(value)!r}: no such file; checkpoints are at <run>/checkpoints/last.ckpt")
    if not path.is_file():
        raise PathError(f"{key}={str(value)!r} is a folder, not a checkpoint file (<run>/checkpoints/last.ckpt)")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a zip archive"
        raise PathError(f"{key}={str(value)!r} is not a checkpoint written by sage/torch.save ({why})") from None
    if not any(n.endswith("data.pkl") for n in names):
        raise PathError(f"{key}={str(value)!r} is a zip archive but not a torch checkpoint (no data.pkl)")
