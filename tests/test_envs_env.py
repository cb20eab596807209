"""One real ALFWorld game in this process: reset text, invalid actions, the step limit, the expert."""

from __future__ import annotations

import shutil

import pytest

from sage.envs import AlfworldEnv, GameLoadError, walkthrough


@pytest.fixture(scope="module")
def env():
    env = AlfworldEnv(max_steps=3)
    yield env
    env.close()


def test_reset_observation_and_task(env, bundled_games):
    game = bundled_games["valid_seen"][0]
    r = env.reset(game)
    assert "Your task is to: " in r.observation and r.observation.rstrip().endswith(r.task)
    assert r.task == "look at alarmclock under the desklamp."
    assert (r.step, r.won, r.done, r.error) == (0, False, False, None)
    assert "look" in r.admissible and r.admissible == sorted(r.admissible)


def test_invalid_actions_cost_a_step_and_limit_ends_episode(env, bundled_games):
    first = env.reset(bundled_games["train"][0])
    # "" is what parse_action returns for an invalid answer; the engine matches commands exactly.
    for k, action in enumerate(["jump around", "", "Go to desk 1"], start=1):
        r = env.step(action)
        assert r.observation == "Nothing happens."
        assert r.step == k and r.admissible == first.admissible and not r.won
        assert r.done is (k == 3)
    assert env.step("look") is r  # after the end, the final result is returned again


def test_valid_action_changes_state(env, bundled_games):
    game = bundled_games["train"][0]
    env.reset(game)
    r = env.step(" " + walkthrough(game)[0] + " ")  # surrounding spaces are ignored by the engine
    assert r.observation.startswith("You arrive at") and r.step == 1


def test_bad_game_file_names_the_file(env, bundled_games, tmp_path):
    bad = tmp_path / "broken" / "trial" / "game.tw-pddl"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"pddl_domain": "(define"}')
    with pytest.raises(GameLoadError, match=str(bad)):
        env.reset(str(bad))
    with pytest.raises(GameLoadError, match="missing.tw-pddl"):
        env.reset(str(tmp_path / "missing.tw-pddl"))
    assert env.reset(bundled_games["train"][1]).step == 0  # the env recovers


def test_expert_plays_and_needs_traj_data(bundled_games, tmp_path):
    game = next(g for g in bundled_games["valid_seen"] if g.task_type == "pick_and_place_simple")
    env = AlfworldEnv(max_steps=50)
    r = env.reset(game)
    assert env.expert_action() == "look"  # alfworld's expert always starts with "look"
    while not r.done:
        r = env.step(env.expert_action())
    assert r.won
    lone = tmp_path / "game.tw-pddl"  # without traj_data.json there is no expert
    shutil.copy(game.path, lone)
    env.reset(str(lone))
    assert env.expert_action() is None
    env.close()
