"""Progress of the long phases that run outside Lightning's own bar: rollout, judge, teacher scoring and
evaluation rollouts.

On a terminal each phase shows a tqdm bar (the library Lightning's default bar uses), rank 0 only;
when stdout is not a terminal (CI, log files) there is no bar, only the one summary line each phase
prints when it ends. ``SAGE_PROGRESS=0`` turns the bars off, ``=1`` forces them on.
"""

from __future__ import annotations

import os
import sys
import time

from tqdm.auto import tqdm

from sage.distributed import world


def _interactive() -> bool:
    forced = os.environ.get("SAGE_PROGRESS")
    if forced is not None:
        return forced not in ("0", "", "false", "False")
    return sys.stdout.isatty()


class Phase:
    """One long phase: `update` moves the bar (and its `key=value` fields); `close(summary)` prints the
    phase's summary line once, on rank 0, bar or not."""

    def __init__(self, name: str, total: int | None, unit: str) -> None:
        self.name, self.t0 = name, time.perf_counter()
        self.rank0 = world()[0] == 0
        self.bar = None
        if self.rank0 and _interactive():
            self.bar = tqdm(total=total, desc=name, unit=unit, leave=False, dynamic_ncols=True, file=sys.stdout)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def update(self, n: int = 1, **fields) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if fields:
                self.bar.set_postfix(fields, refresh=False)

    def _drop_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self, summary: str) -> None:
        self._drop_bar()
        if self.rank0:
            print(f"[{self.name}] {summary} ({self.seconds:.1f} s)", flush=True)

    def __enter__(self) -> Phase:
        return self

    def __exit__(self, *exc) -> None:
        self._drop_bar()  # after close() a no-op; after an exception, no summary line
