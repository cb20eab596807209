"""DataModule helpers that need no model: balanced evaluation subsets, episode statistics, bad input."""

from __future__ import annotations

import pytest

from sage.data import SageDataModule, balanced
from sage.envs import TASK_TYPES, find_games
from sage.epoch import episode_stats
from tests.helpers import make_episode, make_turn


def test_small_evaluations_cover_every_task_type():
    games = find_games("valid_unseen")
    picked = balanced(games, 6)
    assert sorted(g.task_type for g in picked) == sorted(TASK_TYPES)
    assert balanced(games, None) == games and balanced(games, 10_000) == games
    assert len(balanced(games, 8)) == 8 and balanced(games, 8)[:6] == picked


def test_episode_stats_count_gate_labels_and_success():
    turns = [make_turn(k, gate_label=lab, gate=g, confidence=[0.5, 1.0, 0.0]) for k, (lab, g) in
             enumerate([("SKIP", 0.0), ("WEAK", 0.5), ("STRONG", 1.0), ("STRONG", 1.0)])]
    stats = episode_stats([make_episode(turns, won=True), make_episode([], won=False)])
    assert stats["episode_success"] == 0.5 and stats["turns"] == 4.0
    assert (stats["gate/skip_rate"], stats["gate/weak_rate"], stats["gate/strong_rate"]) == (0.25, 0.25, 0.5)
    assert stats["gate_mean"] == pytest.approx(2.5 / 4) and stats["confidence_mean"] == pytest.approx(0.5)


@pytest.mark.parametrize("kwargs, match", [
    ({"source": "web"}, "source"),
    ({"val_splits": ["valid_seen", "test"]}, "unknown ALFWorld split 'test'"),
    ({"train_split": "dev"}, "unknown ALFWorld split 'dev'"),
])
def test_bad_datamodule_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SageDataModule(**kwargs)
