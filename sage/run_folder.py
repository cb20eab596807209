"""Where a run writes: ``<trainer.default_root_dir>/<name>/<version>``, and nothing left by a run that
never started.

`RunLogger` is Lightning's CSVLogger whose ``save_dir`` may be left out: `sage.cli` then sets it to
``trainer.default_root_dir``, so pointing that one key at a scratch disk moves every output of the run
(metrics, checkpoints, kept rollouts, transcripts, results) there. With a plain CSVLogger the run folder
would stay under the logger's own ``save_dir`` whatever the root says.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger

# What setup writes into a version folder before anything is trained or played.
SETUP_FILES = {"config.yaml", "hparams.yaml", "metrics.csv"}


class RunLogger(CSVLogger):
    def __init__(self, save_dir: str | None = None, name: str = "sage", version: int | str | None = None,
                 prefix: str = "", flush_logs_every_n_steps: int = 100) -> None:
        """``save_dir``: null = ``trainer.default_root_dir`` (set by `sage.cli`; "runs" without it)."""
        super().__init__(save_dir if save_dir is not None else "runs", name=name, version=version, prefix=prefix,
                         flush_logs_every_n_steps=flush_logs_every_n_steps)


def new_run_dir(logger) -> Path | None:
    """The version folder a logger will create, if it does not exist yet (None: it exists, or no logger)."""
    logger = logger[0] if isinstance(logger, list) and logger else logger
    if not isinstance(logger, Logger) or logger.log_dir is None:
        return None
    path = Path(logger.log_dir)
    return None if path.exists() else path


def drop_if_unstarted(run: Path | None) -> bool:
    """Remove a version folder this run created when it holds only what setup writes: a run that failed
    before it trained or played anything leaves no folder behind. True when removed."""
    if run is None or not run.is_dir() or not {p.name for p in run.iterdir()} <= SETUP_FILES:
        return False
    shutil.rmtree(run, ignore_errors=True)
    return True
