"""Progress of the long phases that run outside Lightning's own bar: rollout, judge, teacher scoring and
evaluation rollouts.

On a terminal each phase shows a tqdm bar (the library Lightning's default bar uses), rank 0 only;
when stdout is not a terminal (CI, log files) there is no bar (Lightning's is off too, `sage.cli`), only
the one summary line each phase prints when it ends, every epoch, and in a phase that runs long (a
whole-panel evaluation, a teacher pool's build: many minutes on a CPU) a line of its progress every
`LOG_EVERY_S` seconds, so a log file shows the run is alive; training prints its own (`TrainSummary`).
Lines go through ``tqdm.write``, so on a terminal they never land inside a bar's line.
``SAGE_PROGRESS=0`` turns the bars off, ``=1`` forces them on. After SIGTERM a phase stops at its next
update (`sage.preemption`).
"""

from __future__ import annotations

import os
import sys
import time

import lightning as L
from tqdm.auto import tqdm

from sage import preemption
from sage.distributed import world

LOG_EVERY_S = 300.0


def interactive() -> bool:
    forced = os.environ.get("SAGE_PROGRESS")
    if forced is not None:
        return forced not in ("0", "", "false", "False")
    return sys.stdout.isatty()


class Phase:
    """One long phase: `update` moves the bar (and its `key=value` fields); `close(summary)` prints the
    phase's summary line once, on rank 0, bar or not."""

    def __init__(self, name: str, total: int | None, unit: str) -> None:
        if preemption.stop_now():
            raise preemption.Preempted(f"before the {name} pass")
        self.name, self.total, self.unit, self.t0 = name, total, unit, time.perf_counter()
        self.done, self.next_line = 0.0, self.t0 + LOG_EVERY_S
        self.rank0 = world()[0] == 0
        self.bar = None
        if self.rank0 and interactive():
            self.bar = tqdm(total=total, desc=name, unit=unit, leave=False, dynamic_ncols=True, file=sys.stdout)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def update(self, n: float = 1, **fields) -> None:
        """Count `n` more units; fractional when a unit is split over calls (the judge's labels)."""
        if preemption.stop_now():
            raise preemption.Preempted(f"in the {self.name} pass")
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if fields:
                self.bar.set_postfix(fields, refresh=False)
        elif self.rank0 and time.perf_counter() >= self.next_line:
            of = f"/{self.total}" if self.total is not None else ""
            extra = "".join(f", {k}={v}" for k, v in fields.items())
            say(f"[{self.name}] {self.done:.0f}{of} {self.unit}s so far{extra} ({self.seconds:.0f} s)")
            self.next_line = time.perf_counter() + LOG_EVERY_S

    def _drop_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self, summary: str) -> None:
        self._drop_bar()
        if self.rank0:
            say(f"[{self.name}] {summary} ({self.seconds:.1f} s)")

    def __enter__(self) -> Phase:
        return self

    def __exit__(self, *exc) -> None:
        self._drop_bar()  # after close() a no-op; after an exception, no summary line


def say(line: str) -> None:
    """One line on stdout that starts a line of its own, bars or not."""
    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


class TrainSummary(L.Callback):
    """``[train] epoch E: S optimizer steps, loss L (T s)`` at every epoch end, rank 0."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.t0, self.step0 = time.perf_counter(), trainer.global_step

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or not hasattr(self, "t0"):
            return
        loss = trainer.callback_metrics.get("train/loss_epoch")
        loss_text = f", loss {float(loss):.4g}" if loss is not None else ""
        say(f"[train] epoch {trainer.current_epoch}: {trainer.global_step - self.step0} optimizer steps{loss_text} "
            f"({time.perf_counter() - self.t0:.1f} s)")
