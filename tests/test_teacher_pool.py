"""The teacher pool (`sage.teacher_pool`): built once by a tiny random teacher on real bundled train games,
loaded by later runs without playing, refused when made by another teacher or turn limit, resumed exactly
after a stop, and drawn without repeats until used up. Its file is JSON lines (`sage.records_io`): loading it
runs no pickle; an old pickled pool is refused with the command that converts it."""

from __future__ import annotations

import json

import pytest
import torch

from sage import preemption, records_io, teacher_pool
from sage.envs import PromptBuilder
from sage.specs import RolloutSpec, TeacherPoolSpec
from tests.helpers import make_episode, make_turn, tiny_model, tiny_tokenizer

MAX_TURNS, POOL_WORKERS = 3, 2  # the `pool` fixture (conftest.py)
ROLLOUT = RolloutSpec(max_new_tokens=12)


def _build(pool, root, file, teacher, stop=None, max_turns=MAX_TURNS, won_only=False):
    spec = TeacherPoolSpec(file=str(file), games=3, seed=4, games_per_rollout=2)
    return teacher_pool.load_or_build(spec, teacher=teacher, tokenizer=tiny_tokenizer(), env_pool=pool,
                                      prompt=PromptBuilder(), rollout=ROLLOUT, max_turns=max_turns, split="train",
                                      data_root=root, won_only=won_only, stop=stop)


def _played(p):
    return [(ep.game_id, [(t.response_ids, t.logprobs, t.action, t.feedback) for t in ep.turns]) for ep in p.episodes]


@pytest.fixture(scope="module")
def built(pool, bundled_data_root, tmp_path_factory):
    file = tmp_path_factory.mktemp("pool") / "teacher_pool.jsonl"
    return file, _build(pool, bundled_data_root, file, tiny_model(seed=3))


def test_the_pool_is_played_once_then_loaded(built, bundled_data_root):
    file, first = built
    assert file.is_file() and len(first.games) == 3 and len(first.episodes) == 3  # won_only=false keeps all
    assert all(ep.length == MAX_TURNS for ep in first.episodes)  # a random teacher never wins
    assert first.win_rate == 0.0 and first.seconds > 0
    again = _build(None, bundled_data_root, file, tiny_model(seed=3))  # no environment: it must not play
    assert _played(again) == _played(first)


def test_the_pool_file_is_json_lines_and_an_old_pickle_is_converted_once(built, bundled_data_root, tmp_path,
                                                                        monkeypatch):
    """No pickle: the header and every episode are JSON. The pickle an older sage wrote (the same content
    through torch.save) is refused with one line naming the conversion command; converted, it loads equal."""
    file, first = built
    head, *lines = file.read_text().splitlines()
    assert json.loads(head)["kind"] == "teacher_pool" and len(lines) == len(first.episodes)
    old = tmp_path / "old_pool.pt"
    torch.save({"meta": first.meta, "games": first.games, "episodes": first.episodes, "seconds": first.seconds}, old)
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k) or pytest.fail("torch.load ran"))
    with pytest.raises(records_io.LegacyFileError) as refused:
        _build(None, bundled_data_root, old, tiny_model(seed=3))
    assert str(refused.value) == (
        f"data.teacher_pool.file: {str(old)!r} is a pickle written by an older sage (torch.save), which can run "
        f"code when loaded, so it is not read; if it is yours, convert it once: python -m sage.records_io {old} "
        "(writes old_pool.jsonl beside it), then name that file in data.teacher_pool.file")
    monkeypatch.undo()
    records_io.main([str(old)])
    assert _played(_build(None, bundled_data_root, tmp_path / "old_pool.jsonl", tiny_model(seed=3))) == _played(first)


def test_a_pool_written_before_the_rename_still_loads(built, bundled_data_root, tmp_path):
    """Pools whose header names games_per_rollout by its old name (``batch``, data.teacher_pool.batch) load as
    before: the record's field is read under its new name."""
    file, first = built
    head, *lines = file.read_text().splitlines()
    header = json.loads(head)
    header["meta"] = {("batch" if k == "games_per_rollout" else k): v for k, v in header["meta"].items()}
    assert header["meta"]["batch"] == 2
    old = tmp_path / "old_names.jsonl"
    old.write_text("\n".join([json.dumps(header), *lines]) + "\n")
    assert _played(_build(None, bundled_data_root, old, tiny_model(seed=3))) == _played(first)


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
    """Stopped after two turns of its first rollout: the partial file keeps them, and the resumed build plays
    exactly what the uninterrupted one played (window mode is bit for bit, tests/test_preemption.py)."""
    _, whole = built
    file = tmp_path / "pool.jsonl"
    calls = []
    with pytest.raises(preemption.Preempted, match="teacher pool"):
        _build(pool, bundled_data_root, file, tiny_model(seed=3), stop=lambda: calls.append(1) or len(calls) > 2)
    assert not file.is_file() and file.with_name("pool.jsonl.partial").is_file()
    resumed = _build(pool, bundled_data_root, file, tiny_model(seed=3))
    assert _played(resumed) == _played(whole)
    assert not file.with_name("pool.jsonl.partial").exists()


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
