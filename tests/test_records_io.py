"""Episode files without pickle (`sage.records_io`): exact round trips, refusals in one line, and the
one-time conversion of a file an older sage pickled."""

from __future__ import annotations

import json
import math
import pickle

import pytest
import torch

from sage import records_io
from sage.rollout.loop import PartialRollout
from sage.rollout.player import PartialPlay
from tests.helpers import make_episode, make_turn, transcript_episode

# floats that a lossy text format would change: float32 values widened to float64, tiny, huge, -inf
HARD = [float(torch.tensor(-0.1, dtype=torch.float32)), 1e-310, -1.7976931348623157e308, -math.inf, -2.0 / 3.0]


def episodes():
    window = make_episode([make_turn(0, logprobs=HARD[:3], response_ids=[5, 6, 7], gate_probs={"SKIP": 1 / 3},
                                     confidence=[0.1, 0.2, 0.3], teacher_logprobs=HARD[2:5], gate=0.5, weight=0.25,
                                     expert_action="go to desk 1", subgoal_before=0, subgoal_after=1),
                           make_turn(1, feedback='"quoted" \\ and \u00e9 \U0001F600', done=True, won=True)],
                          won=True, truncated=True)
    transcript = transcript_episode([1, 2], [([5, 6], [7]), ([8], [])], game_id="g1", error="worker died")
    return [window, transcript]


def test_episodes_round_trip_exactly(tmp_path):
    file = tmp_path / "epoch_000.jsonl"
    records_io.write_episodes(file, "epoch", episodes(), note="x")
    head, back = records_io.read_episodes(file, "epoch")
    assert back == episodes() and head["note"] == "x"
    assert [math.copysign(1, v) for v in back[0].turns[0].logprobs] == [math.copysign(1, v) for v in HARD[:3]]
    assert b"\x80" not in file.read_bytes()[:1]


def test_a_stopped_play_round_trips_with_its_sampler_state(tmp_path):
    gen = torch.Generator().manual_seed(3)
    gen.manual_seed(3)
    torch.rand(5, generator=gen)
    eps = episodes()
    partial = PartialPlay([eps[0]], PartialRollout([eps[1]], [False], 7, gen.get_state(), {"g1": 900}))
    file = tmp_path / "epoch_001_partial.jsonl"
    records_io.write_partial(file, "partial_play", partial)
    _, back = records_io.read_partial(file, "partial_play")
    assert back.finished == partial.finished and back.current.episodes == partial.current.episodes
    assert (back.current.done, back.current.turn, back.current.overflow) == ([False], 7, {"g1": 900})
    assert torch.equal(back.current.rng_state, gen.get_state())
    again = torch.Generator()
    again.set_state(back.current.rng_state)
    assert torch.equal(torch.rand(3, generator=again), torch.rand(3, generator=gen))


@pytest.mark.parametrize("content, why", [
    ("not json\n", "is not an episodes file written by sage"),
    ('{"format": "sage-episodes", "version": 1, "kind": "teacher_pool", "episodes": 0}\n',
     "holds 'teacher_pool' records of version 1; expected 'epoch'"),
    ('{"format": "sage-episodes", "version": 1, "kind": "epoch", "episodes": 2}\n{}\n', "is cut short: 1 of its 2"),
])
def test_other_files_are_refused_in_one_line(tmp_path, content, why):
    file = tmp_path / "x.jsonl"
    file.write_text(content)
    with pytest.raises(records_io.RecordsFileError, match=why):
        records_io.read_episodes(file, "epoch")


def test_an_old_pickle_is_refused_unread_then_converted_once(tmp_path, monkeypatch):
    """The refusal reads 4 bytes, never unpickles (a pickle that would run code is not run); `convert`
    (the user's explicit choice) writes the new file beside it, and a checkpoint that still names the .pt
    finds it (`converted`)."""
    old = tmp_path / "epoch_002.pt"
    torch.save(episodes(), old)
    ran = []
    monkeypatch.setattr(pickle, "loads", lambda *a: ran.append(a))
    monkeypatch.setattr(torch, "load", lambda *a, **k: ran.append(a))
    with pytest.raises(records_io.LegacyFileError, match=r"python -m sage.records_io .*epoch_002.pt \(writes "
                                                          r"epoch_002.jsonl beside it\)"):
        records_io.read_episodes(old, "epoch")
    assert not ran
    monkeypatch.undo()
    assert records_io.converted(old) == old
    records_io.main([str(old)])
    assert records_io.converted(old) == tmp_path / "epoch_002.jsonl"
    assert records_io.read_episodes(records_io.converted(old), "epoch")[1] == episodes()


@pytest.mark.parametrize("state", [torch.tensor([12345678901], dtype=torch.long), None, 7])
def test_other_sampler_states_round_trip(state):
    """A generation engine's state may be another tensor (vLLM's call count, int64), none, or plain JSON."""
    back = records_io.decode_state(json.loads(json.dumps(records_io.encode_state(state))))
    assert torch.equal(back, state) and back.dtype == state.dtype if isinstance(state, torch.Tensor) else back == state
