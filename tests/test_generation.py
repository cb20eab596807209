"""The HF generation backend: batching, KV-cache sessions and recorded log-probs are exact."""

from __future__ import annotations

import math

import pytest
import torch

from sage.rollout.generation import HFGenerator, SamplingParams, sampling_logprobs
from tests.helpers import assert_float32_close, float32_tol, tiny_model, tiny_tokenizer

GREEDY = SamplingParams(greedy=True, max_new_tokens=10, stop_strings=())


@pytest.fixture(scope="module")
def model_tok():
    """A float64 model: batched vs one-by-one and cached vs fresh prefill are the same math over
    different shapes, so greedy tokens must match exactly (float32 rounding could flip a near-tie on
    some CPU). The recorded log-probs are computed in float32 by design (`sampling_logprobs`), so they
    are compared at float32 resolution."""
    return tiny_model(seed=3, dtype=torch.float64), tiny_tokenizer()


def _prompts(tok):
    texts = ["go to the desk", "open drawer 1 and look inside it please", "take mug"]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_batched_equals_one_by_one_and_logprobs_match_fresh_forward(model_tok):
    model, tok = model_tok
    gen = HFGenerator(model, tok)
    prompts = _prompts(tok)
    batched = gen.generate(prompts, GREEDY)
    for p, b in zip(prompts, batched, strict=True):
        single = gen.generate([p], GREEDY)[0]
        assert b.token_ids == single.token_ids
        assert_float32_close(b.logprobs, single.logprobs, both_float32=True)
        ids = torch.tensor([p + b.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0], -1)  # float64 reference
        ref = [logp[len(p) - 1 + k, t].item() for k, t in enumerate(b.token_ids)]
        assert_float32_close(b.logprobs, ref)


def test_session_cache_reuse_equals_fresh_prefill(model_tok):
    model, tok = model_tok
    cached, fresh = HFGenerator(model, tok), HFGenerator(model, tok)
    prompts = _prompts(tok)
    first = cached.generate(prompts, GREEDY, session_ids=[0, 1, 2], keep_cache=True)
    # two sessions go on (one drops out), each with its answer and new text appended
    grown = [prompts[i] + first[i].token_ids + [11, 12 + i] for i in (0, 2)]
    again = cached.generate(grown, GREEDY, session_ids=[0, 2], keep_cache=True)
    assert [len(t) for t in cached._batch.tokens] == [len(g) + len(a.token_ids) for g, a in zip(grown, again, strict=True)]
    ref = fresh.generate(grown, GREEDY)
    for a, r in zip(again, ref, strict=True):
        assert a.token_ids == r.token_ids
        assert_float32_close(a.logprobs, r.logprobs, both_float32=True)


def test_sampling_is_seeded(model_tok):
    model, tok = model_tok
    params = SamplingParams(temperature=1.0, max_new_tokens=8, stop_strings=())
    a = HFGenerator(model, tok, seed=7).generate(_prompts(tok), params)
    b = HFGenerator(model, tok, seed=7).generate(_prompts(tok), params)
    c = HFGenerator(model, tok, seed=8).generate(_prompts(tok), params)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.token_ids for g in a] != [g.token_ids for g in c]


def test_stop_string_ends_generation(model_tok):
    model, tok = model_tok
    gen = HFGenerator(model, tok)
    assert gen._hit_stop_string(tok("<action>look</action>", add_special_tokens=False)["input_ids"], ("</action>",))
    assert not gen._hit_stop_string(tok("<action>look", add_special_tokens=False)["input_ids"], ("</action>",))


def test_top_p_logprobs_renormalise_over_the_nucleus():
    # p = (0.5, 0.3, 0.2); top_p = 0.7 keeps {0, 1} -> (0.625, 0.375), token 2 impossible.
    # sampling_logprobs works in float32 by design: hand values hold to a few float32 roundings.
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64))
    lp = sampling_logprobs(logits, SamplingParams(top_p=0.7))
    assert lp[0, 0].item() == pytest.approx(math.log(0.625), abs=float32_tol(1.0))
    assert lp[0, 1].item() == pytest.approx(math.log(0.375), abs=float32_tol(1.0))
    assert lp[0, 2].item() == -math.inf
    # temperature 2 on the same logits: softmax(log p / 2) ~ sqrt(p)
    lp2 = sampling_logprobs(logits, SamplingParams(temperature=2.0))
    z = sum(math.sqrt(p) for p in (0.5, 0.3, 0.2))
    assert lp2[0, 2].item() == pytest.approx(math.log(math.sqrt(0.2) / z), abs=float32_tol(1.0))


@pytest.mark.parametrize("bad", [{"temperature": 0.0}, {"top_p": 0.0}, {"max_new_tokens": 0}])
def test_bad_sampling_params_are_rejected(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingParams(**bad)
