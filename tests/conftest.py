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
