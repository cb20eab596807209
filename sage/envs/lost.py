"""Episodes lost to the environment (a worker killed, a step that raised): counted, said, and fatal past a share.

Why: a dead environment layer used to produce a result instead of an error: its episodes ended as errors,
training left them out and evaluation counted them as lost games, so a run whose every worker died trained
on nothing, or printed 0 % success, and exited 0. Now each phase says how many of the episodes it asked
for were lost, and past a share (``data.max_lost_train_share``, ``data.max_lost_eval_share``) the run stops
with one line and exit code 3 (`EpisodesLostError`), after writing what it has.
"""

from __future__ import annotations

from sage.rollout.records import Episode

EXIT_CODE = 3


class EpisodesLostError(RuntimeError):
    """More episodes of a phase were lost to the environment than its setting allows."""


def lost(episodes: list[Episode]) -> list[Episode]:
    return [ep for ep in episodes if ep.error is not None]


def lost_line(label: str, n_lost: int, asked: int, first_error: str | None) -> str:
    """``[label] 2 of 8 episodes lost to the environment (first: ...)``."""
    why = f" (first: {first_error})" if first_error else ""
    return f"[{label}] {n_lost} of {asked} episodes lost to the environment{why}"


def check_share(what: str, n_lost: int, asked: int, limit: float, key: str, wrote: str) -> None:
    """Raise `EpisodesLostError` when ``n_lost / asked`` exceeds ``limit`` (the setting ``key``)."""
    if asked and n_lost / asked > limit:
        raise EpisodesLostError(
            f"{what}: {n_lost} of {asked} episodes were lost to the environment, more than {key}={limit:g} "
            f"allows; {wrote}. Look for the workers' errors above (an environment worker killed, out of memory, a "
            "game the engine cannot step), fix it and run again")
