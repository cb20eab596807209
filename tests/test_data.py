"""DataModule helpers that need no model: balanced evaluation subsets, episode statistics, bad input."""

from __future__ import annotations

import dataclasses

import pytest

from sage.data import SageDataModule
from sage.envs import TASK_TYPES, find_games
from sage.epoch import episode_stats
from sage.loaders import balanced
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


def test_episode_stats_count_admissible_and_repeated_actions_as_the_evaluation_does():
    """The training rollouts' loop and admissible rates use the evaluation's per-turn definitions."""
    from callbacks.evaluation import game_record

    acts = ["go to desk 1", "go to desk 1", "take pen", "go to desk 1", ""]  # "": an unparsed answer
    turns = [make_turn(k, action=a, valid_format=bool(a), admissible=["go to desk 1", "look"])
             for k, a in enumerate(acts)]
    loop = [make_turn(k, action="look") for k in range(3)]  # admissible, repeated twice
    stats = episode_stats([make_episode(turns), make_episode(loop, game_id="g1")])
    assert stats["admissible_rate"] == pytest.approx(6 / 8)  # 3 + 3
    assert stats["repeat_rate"] == pytest.approx(3 / 8)  # turn 1, then loop turns 1 and 2; "" never repeats
    record = game_record("seen", make_episode(turns))
    assert record["admissible"] == [1, 1, 0, 1, 0] and record["repeat"] == [0, 1, 0, 0, 0]
    assert record["actions"] == acts


def test_judge_agreement_counts_judged_turns_with_an_offline_label():
    arrive = {"feedback": "You arrive at desk 1.", "subgoal_before": 0, "subgoal_after": 0}
    turns = [  # offline labels: SKIP (expert's action), WEAK (a detour), STRONG (fails), no expert tracked
        make_turn(0, action="go to desk 1", expert_action="go to desk 1", gate_label="SKIP", **arrive),
        make_turn(1, action="go to bed 1", expert_action="go to desk 1", gate_label="SKIP", **arrive),
        make_turn(2, action="open bed 1", feedback="Nothing happens.", expert_action="go to desk 1", gate_label="STRONG"),
        make_turn(3, action="look", gate_label="WEAK"),
    ]
    stats = episode_stats([make_episode(turns)])
    assert stats["judge_agreement"] == pytest.approx(2 / 3) and stats["judge_agreement_turns"] == 3.0
    # a two-level judge is scored on two-level labels: the detour is INTERVENE
    two = [dataclasses.replace(t, gate_label=g) for t, g in zip(turns, ["SKIP", "INTERVENE", "INTERVENE", "SKIP"], strict=True)]
    assert episode_stats([make_episode(two)])["judge_agreement"] == 1.0
    # no judge (gate mode always) or no tracked expert: no figure
    assert "judge_agreement" not in episode_stats([make_episode([make_turn(0, gate_label="ALWAYS")])])
    assert "judge_agreement" not in episode_stats([make_episode([make_turn(0, gate_label="SKIP")])])


@pytest.mark.parametrize("kwargs, match", [
    ({"source": "web"}, "source"),
    ({"val_splits": ["valid_seen", "test"]}, "unknown ALFWorld split 'test'"),
    ({"train_split": "dev"}, "unknown ALFWorld split 'dev'"),
])
def test_bad_datamodule_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SageDataModule(**kwargs)
