"""The teacher pool (`sage.teacher_pool`): built once by a tiny random teacher on real bundled train games,
loaded by later runs without playing, refused when made by another teacher or turn limit, resumed exactly
after a stop, and drawn without repeats until used up."""

from __future__ import annotations

import pytest
import torch

from sage import preemption, teacher_pool
from sage.envs import PromptBuilder
from sage.specs import RolloutSpec, TeacherPoolSpec
from tests.helpers import make_episode, make_turn, tiny_model, tiny_tokenizer

MAX_TURNS, POOL_WORKERS = 3, 2  # the `pool` fixture (conftest.py)
ROLLOUT = RolloutSpec(max_new_tokens=12)


def _build(pool, root, file, teacher, stop=None, max_turns=MAX_TURNS, won_only=False):
    spec = TeacherPoolSpec(file=str(file), games=3, seed=4, batch=2)
    return teacher_pool.load_or_build(spec, teacher=teacher, tokenizer=tiny_tokenizer(), env_pool=pool,
                                      prompt=PromptBuilder(), rollout=ROLLOUT, max_turns=max_turns, split="train",
                                      data_root=root, won_only=won_only, stop=stop)


def _played(p):
    return [(ep.game_id, [(t.response_ids, t.action, t.feedback) for t in ep.turns]) for ep in p.episodes]


@pytest.fixture(scope="module")
def built(pool, bundled_data_root, tmp_path_factory):
    file = tmp_path_factory.mktemp("pool") / "teacher_pool.pt"
    return file, _build(pool, bundled_data_root, file, tiny_model(seed=3))


def test_the_pool_is_played_once_then_loaded(built, bundled_data_root):
    file, first = built
    assert file.is_file() and len(first.games) == 3 and len(first.episodes) == 3  # won_only=false keeps all
    assert all(ep.length == MAX_TURNS for ep in first.episodes)  # a random teacher never wins
    assert first.win_rate == 0.0 and first.seconds > 0
    again = _build(None, bundled_data_root, file, tiny_model(seed=3))  # no environment: it must not play
    assert _played(again) == _played(first)


@pytest.mark.parametrize("change", ["teacher", "max_turns", "won_only"])
def test_a_pool_made_with_other_settings_is_refused_by_name(built, bundled_data_root, change):
    file, _ = built
    kwargs = {"teacher": tiny_model(seed=3)}
    if change == "teacher":
        kwargs["teacher"] = tiny_model(seed=4)
    elif change == "max_turns":
        kwargs["max_turns"] = MAX_TURNS + 1
    else:
        kwargs["won_only"] = True
    key = {"teacher": "teacher_sha256"}.get(change, change)
    with pytest.raises(ValueError, match=rf"data.teacher_pool.file=.*another {key} "):
        _build(None, bundled_data_root, file, **kwargs)


def test_a_stopped_build_resumes_to_the_same_pool(built, pool, bundled_data_root, tmp_path):
    """Stopped after two turns of its first batch: the partial file keeps them, and the resumed build plays
    exactly what the uninterrupted one played (window mode is bit for bit, tests/test_preemption.py)."""
    _, whole = built
    file = tmp_path / "pool.pt"
    calls = []
    with pytest.raises(preemption.Preempted, match="teacher pool"):
        _build(pool, bundled_data_root, file, tiny_model(seed=3), stop=lambda: calls.append(1) or len(calls) > 2)
    assert not file.is_file() and file.with_name("pool.pt.partial").is_file()
    resumed = _build(pool, bundled_data_root, file, tiny_model(seed=3))
    assert _played(resumed) == _played(whole)
    assert not file.with_name("pool.pt.partial").exists()


def test_epochs_draw_every_pooled_episode_once_before_repeating():
    eps = [make_episode([make_turn()], game_id=f"g{i}") for i in range(5)]
    ids = [[ep.game_id for ep in teacher_pool.draw(eps, 2, seed=1, epoch=e)] for e in range(3)]
    assert sorted(ids[0] + ids[1] + ids[2][:1]) == [f"g{i}" for i in range(5)]  # 5 draws: all 5, once each
    assert ids[2][1] == ids[0][0]  # the 6th wraps to the permutation's start
    assert ids != [[ep.game_id for ep in teacher_pool.draw(eps, 2, seed=2, epoch=e)] for e in range(3)]
    drawn = teacher_pool.draw(eps, 1, seed=1, epoch=0)[0]
    drawn.turns[0].gate = 0.5  # training annotates what it draws: the pool's own episode stays as it was
    assert all(ep.turns[0].gate == 1.0 for ep in eps)
    with pytest.raises(ValueError, match="no episode"):
        teacher_pool.draw([], 2, seed=0, epoch=0)


def test_model_digest_tells_models_apart():
    a, b = tiny_model(seed=3), tiny_model(seed=3)
    assert teacher_pool.model_sha256(a) == teacher_pool.model_sha256(b)
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-3
    assert teacher_pool.model_sha256(a) != teacher_pool.model_sha256(b)
