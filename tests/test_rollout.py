"""The multi-turn rollout loop on real bundled ALFWorld games with a tiny random student."""

from __future__ import annotations

import pytest
import torch

from sage.envs import EnvPool, PromptBuilder, find_games
from sage.rollout.generation import HFGenerator
from sage.rollout.loop import rollout
from sage.sources.expert import expert_episodes
from sage.specs import RolloutSpec
from tests.helpers import assert_float32_close, tiny_model, tiny_tokenizer

MAX_TURNS = 3


@pytest.fixture(scope="module")
def setup():
    """A float64 student: batched vs per-game rollouts and KV-cached vs fresh forwards are the same math
    over different shapes, so greedy tokens must agree exactly on any CPU (in float32 a near-tie could
    flip). Recorded log-probs are float32 by design (`sampling_logprobs`): compared at float32 resolution."""
    games = find_games("valid_seen", limit=2) + find_games("valid_unseen", limit=1)
    return games, tiny_model(seed=5, dtype=torch.float64), tiny_tokenizer(), PromptBuilder()


def _tokens(episodes):
    return [[t.response_ids for t in ep.turns] for ep in episodes]


@pytest.mark.parametrize("mode", ["window", "transcript"])
def test_batched_rollout_equals_per_game_rollout(pool, setup, mode):
    games, model, tok, prompt = setup
    cfg = RolloutSpec(context_mode=mode, max_new_tokens=12)
    batched = rollout(HFGenerator(model, tok), pool, games, prompt, tok, cfg, greedy=True)
    single = [rollout(HFGenerator(model, tok), pool, [g], prompt, tok, cfg, greedy=True)[0] for g in games]
    assert _tokens(batched) == _tokens(single)
    assert [ep.length for ep in batched] == [MAX_TURNS] * len(games)  # a random policy never wins
    for b, s in zip(batched, single, strict=True):
        assert [t.feedback for t in b.turns] == [t.feedback for t in s.turns]
        for tb, ts in zip(b.turns, s.turns, strict=True):
            assert_float32_close(tb.logprobs, ts.logprobs, both_float32=True)
        if mode == "window":
            assert [t.context_ids for t in b.turns] == [t.context_ids for t in s.turns]
        else:
            assert b.sequence_ids == s.sequence_ids


@pytest.mark.parametrize("mode", ["window", "transcript"])
def test_recorded_logprobs_match_a_fresh_forward(pool, setup, mode):
    games, model, tok, prompt = setup
    cfg = RolloutSpec(context_mode=mode, max_new_tokens=12, temperature=0.7)
    episodes = rollout(HFGenerator(model, tok, seed=1), pool, games[:2], prompt, tok, cfg)
    for ep in episodes:
        for t in ep.turns:
            ctx = t.context_ids if mode == "window" else ep.sequence_ids[: t.offset]
            ids = torch.tensor([ctx + t.response_ids])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0] / 0.7, -1)  # float64 reference
            ref = [logp[len(ctx) - 1 + k, y].item() for k, y in enumerate(t.response_ids)]
            assert_float32_close(t.logprobs, ref)


def test_transcript_sequence_marks_exactly_the_students_tokens(pool, setup):
    games, model, tok, prompt = setup
    cfg = RolloutSpec(context_mode="transcript", max_new_tokens=8)
    (ep,) = rollout(HFGenerator(model, tok), pool, games[:1], prompt, tok, cfg, greedy=True)
    assert len(ep.sequence_ids) == len(ep.student_mask) == len(ep.turn_index)
    assert sum(ep.student_mask) == sum(len(t.response_ids) for t in ep.turns)
    for k, t in enumerate(ep.turns):
        assert ep.sequence_ids[t.offset : t.offset + len(t.response_ids)] == t.response_ids
        assert set(ep.turn_index[t.offset : t.offset + len(t.response_ids)]) == {k}
    # later turns see the feedback of earlier ones, as chat text
    text = tok.decode(ep.sequence_ids)
    assert ep.turns[0].feedback.strip()[:30] in text


def test_sampled_rollouts_are_reproducible(pool, setup):
    games, model, tok, prompt = setup
    cfg = RolloutSpec(max_new_tokens=8)
    a = rollout(HFGenerator(model, tok, seed=4), pool, games[:2], prompt, tok, cfg)
    b = rollout(HFGenerator(model, tok, seed=4), pool, games[:2], prompt, tok, cfg)
    assert _tokens(a) == _tokens(b)


def test_long_contexts_follow_the_stated_policy(pool, setup):
    games, model, tok, prompt = setup
    # window: prompts (~300 tokens) cannot fit 200 tokens -> left-truncated, flagged, no crash
    cfg = RolloutSpec(max_new_tokens=8, max_context_tokens=200)
    eps = rollout(HFGenerator(model, tok), pool, games[:1], prompt, tok, cfg, greedy=True)
    assert eps[0].truncated and eps[0].length == MAX_TURNS
    assert all(len(t.context_ids) <= 200 - 8 for t in eps[0].turns)
    # transcript: the episode stops (not won) once the chat would overflow
    first_len = len(rollout(HFGenerator(model, tok), pool, games[:1], prompt, tok,
                            RolloutSpec(context_mode="transcript", max_new_tokens=8), greedy=True)[0].sequence_ids)
    cfg = RolloutSpec(context_mode="transcript", max_new_tokens=8, max_context_tokens=first_len - 20)
    eps = rollout(HFGenerator(model, tok), pool, games[:1], prompt, tok, cfg, greedy=True)
    assert eps[0].truncated and not eps[0].won and 1 <= eps[0].length < MAX_TURNS


def test_expert_walkthrough_through_the_loop_wins(setup):
    games, _, tok, prompt = setup
    with EnvPool(num_workers=1, max_steps=50) as pool:
        for mode in ("window", "transcript"):
            eps = expert_episodes(games, prompt, tok, RolloutSpec(context_mode=mode), pool)
            assert all(ep.won for ep in eps), [ep.game_id for ep in eps if not ep.won]
            assert all(t.valid_format for ep in eps for t in ep.turns)
