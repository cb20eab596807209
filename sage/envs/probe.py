"""The start-up probe: before any model loads, one environment worker starts and resets one game.

Why: when the environment layer cannot start (alfworld failing at import because $ALFWORLD_DATA names a
folder it cannot make, a broken install), every worker dies, and a run used to go on with no game played:
`sage validate` printed a table of 0.0 % and `sage fit` trained nothing, both with exit code 0. The probe
finds it in seconds and stops the run with one line naming the cause, the data root and $ALFWORLD_DATA
(`EnvironmentStartError`, exit code 2). `SageDataModule.probe_environment` runs it once the settings are
checked, before the trainer and the models exist; its pool is the one the run then plays with, so the worker
it starts is not started twice.
"""

from __future__ import annotations

import os

from sage.envs.games import GameInfo, GameLoadError, resolve_data_root
from sage.envs.pool import EnvPool
from sage.errors import InputError


class EnvironmentStartError(InputError, RuntimeError):
    """The probe's worker could not start the engine or reset its game."""


def started_pool(game: GameInfo, data_root: str | None, num_workers: int, max_steps: int,
                 expert: bool) -> EnvPool:
    """An `EnvPool` whose first worker has reset ``game`` (a corrupt game file stays a `GameLoadError`, which
    names the file); any other failure is an `EnvironmentStartError`."""
    pool = EnvPool(num_workers=num_workers, max_steps=max_steps, expert=expert)
    try:
        (result,) = pool.reset([game])
        cause = result.error
    except GameLoadError:
        pool.close()
        raise
    except Exception as exc:
        cause = str(exc)
    if cause is None:
        return pool
    pool.close()
    where = "a worker process" if num_workers else "this process (data.env_workers 0)"
    raise EnvironmentStartError(
        f"the ALFWorld environment does not start: resetting game {game.game_id!r} in {where} failed: {cause} "
        f"(data root {str(resolve_data_root(data_root))!r}, $ALFWORLD_DATA={os.environ.get('ALFWORLD_DATA')!r}); "
        "nothing was loaded or written")

