"""Shared fixtures. Env tests always use the bundled ALFWorld subset, whatever $ALFWORLD_DATA says."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def bundled_data_root() -> str:
    from sage.envs import bundled_root

    return str(bundled_root())


@pytest.fixture(scope="session")
def bundled_games(bundled_data_root) -> dict:
    """Canonical split -> sorted list of the bundled GameInfo."""
    from sage.envs import SPLITS, find_games

    return {split: find_games(split, data_root=bundled_data_root) for split in SPLITS}


@pytest.fixture(scope="module")
def pool(request):
    """A module's environment pool of real ALFWorld workers, shared by its tests (starting workers and
    loading games dominates tiny runs). A test module sets ``MAX_TURNS`` (default 3), ``POOL_WORKERS``
    (default 2) and ``POOL_RECYCLE_AFTER`` (default 64) to shape it."""
    from sage.envs import EnvPool

    module = request.module
    with EnvPool(num_workers=getattr(module, "POOL_WORKERS", 2), max_steps=getattr(module, "MAX_TURNS", 3),
                 recycle_after=getattr(module, "POOL_RECYCLE_AFTER", 64)) as p:
        yield p
