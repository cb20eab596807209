"""Each epoch's rollouts kept beside the checkpoints (``<run>/epoch_data/``), so a resumed run trains the same
samples: a finished rollout as ``epoch_NNN.jsonl``, one stopped by SIGTERM as ``epoch_NNN_partial.jsonl``
(`sage.records_io`). Every checkpoint holds `KeptRollouts.state`: which file, and how many of the epoch's
micro-batches were trained. `check_lost` judges a fresh rollout's lost episodes once it is kept."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from sage import preemption, records_io
from sage.distributed import all_reduce, world
from sage.envs.lost import check_share, lost_line
from sage.progress import say
from sage.rollout.player import PartialPlay, PlayStopped
from sage.rollout.records import Episode

log = logging.getLogger(__name__)


class KeptRollouts:
    """Where this run's current epoch rollout is kept, and the resume state a checkpoint brought."""

    def __init__(self) -> None:
        self.file: Path | None = None
        self.index: int | None = None  # the epoch whose rollout `file` (or the partial file) holds
        self.partial_file: Path | None = None  # a rollout stopped by SIGTERM, kept for the resume
        self._resume: dict | None = None

    def state(self, items_done: int) -> dict:
        if self.partial_file is not None:  # stopped by SIGTERM inside the rollout
            return {"epoch": self.index, "partial_file": str(self.partial_file), "items_done": 0}
        if self.file is None:
            return {}
        return {"epoch": self.index, "episodes_file": str(self.file), "items_done": int(items_done)}

    def load(self, state: dict) -> None:
        self._resume = dict(state) or None

    def _path(self, log_dir: str | None, epoch: int, kind: str = "") -> Path | None:
        if log_dir is None:
            return None
        rank, size = world()
        return Path(log_dir) / "epoch_data" / f"epoch_{epoch:03d}{kind}{f'_rank{rank}' if size > 1 else ''}.jsonl"

    def episodes(self, epoch: int, log_dir: str | None,
                 collect: Callable[[int, PartialPlay | None], list[Episode]]) -> tuple[list[Episode], int, bool]:
        """This epoch's rollouts, the items already trained and whether they were collected now: the kept
        ones when resuming this epoch, else ``collect(epoch, partial)``'s (written atomically; a SIGTERM
        inside it keeps the part played and raises `preemption.Preempted`)."""
        resume, self._resume = self._resume, None
        kept = {k: records_io.converted(resume[k]) for k in ("episodes_file", "partial_file") if k in (resume or {})}
        if resume and resume.get("epoch") == epoch and kept.get("episodes_file", Path("")).is_file():
            self.file, self.index = kept["episodes_file"], epoch
            return records_io.read_episodes(self.file, "epoch")[1], int(resume["items_done"]), False
        partial = None
        if resume and resume.get("epoch") == epoch and kept.get("partial_file", Path("")).is_file():
            partial = records_io.read_partial(kept["partial_file"], "partial_play")[1]
            log.info("resuming the rollout of epoch %d after its first %d turns", epoch, partial.turns)
        self.partial_file, self.file, self.index = None, None, epoch
        try:
            episodes = collect(epoch, partial)
        except PlayStopped as stopped:
            self.partial_file = self._path(log_dir, epoch, "_partial")
            if self.partial_file is not None:
                records_io.write_partial(self.partial_file, "partial_play", stopped.partial)
            raise preemption.Preempted(
                f"in the rollout of epoch {epoch} after {stopped.partial.turns} turns (kept in {self.partial_file})"
            ) from None
        self.file = self._path(log_dir, epoch)
        if self.file is not None:
            records_io.write_episodes(self.file, "epoch", episodes)
        if partial is not None:  # the whole rollout is kept now
            kept["partial_file"].unlink(missing_ok=True)
        return episodes, 0, True


def check_lost(epoch: int, lost: tuple[int, int, str | None], limit: float, kept: Path | None,
               log_dir: str | None) -> int:
    """Say how many of the epoch's episodes the environment lost (``lost``: lost, asked, the first error;
    summed over ranks: one decision) and stop past ``limit`` (data.max_lost_train_share, `sage.envs.lost`),
    the played ones kept in ``kept``. Returns the number lost over all ranks."""
    n_lost, asked, first = lost
    totals = all_reduce(torch.tensor([float(n_lost), float(asked)], dtype=torch.float64), "sum")
    n_lost, asked = int(totals[0]), int(totals[1])
    if n_lost:
        say(lost_line(f"rollout epoch {epoch}", n_lost, asked, first))
        ckpt = Path(log_dir) / "checkpoints" / "last.ckpt"
        wrote = f"the {asked - n_lost} played episodes are in {kept}" + (
            f"; the last checkpoint, {ckpt}, resumes from the epoch's start" if ckpt.is_file() else "")
        check_share(f"the rollout of epoch {epoch}", n_lost, asked, limit, "data.max_lost_train_share", wrote)
    return n_lost
