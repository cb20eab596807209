"""The HF generation backend: batching, ragged KV-cache sessions, compaction and recorded log-probs are exact.

Comparisons across batch shapes run the tiny model in float64, where rounding differences between
shapes are ~1e-16 and cannot flip a greedy argmax or move a log-prob past the tolerance."""

from __future__ import annotations

import math

import pytest
import torch

from sage.rollout.generation import HFGenerator, SamplingParams, sampling_logprobs
from sage.rollout.sampling import pick_tokens
from tests.helpers import biased_model, tiny_model, tiny_tokenizer

GREEDY = SamplingParams(greedy=True, max_new_tokens=10, stop_strings=())
TOL = 1e-9  # float64 log-probs from differently shaped computations


@pytest.fixture(scope="module")
def model_tok():
    return tiny_model(seed=3).double(), tiny_tokenizer()


def _prompts(tok):
    texts = ["go to the desk", "open drawer 1 and look inside it please, then tell me what is there", "take mug"]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def _fresh_logprobs(model, context, response):
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([context + response])).logits[0].double(), -1)
    return [logp[len(context) - 1 + k, t].item() for k, t in enumerate(response)]


@pytest.mark.parametrize("prefill_tokens", [8192, 8])  # one prefill group, or one group per prompt
def test_batched_equals_one_by_one_and_logprobs_match_fresh_forward(model_tok, prefill_tokens):
    model, tok = model_tok
    gen = HFGenerator(model, tok, prefill_tokens=prefill_tokens)
    prompts = _prompts(tok)
    batched = gen.generate(prompts, GREEDY)
    for p, b in zip(prompts, batched, strict=True):
        single = HFGenerator(model, tok).generate([p], GREEDY)[0]
        assert b.token_ids == single.token_ids
        assert b.logprobs == pytest.approx(_fresh_logprobs(model, p, b.token_ids), abs=TOL)


def test_session_cache_reuse_equals_fresh_prefill_and_holds_no_holes(model_tok):
    model, tok = model_tok
    cached, fresh = HFGenerator(model, tok), HFGenerator(model, tok)
    prompts = _prompts(tok)
    first = cached.generate(prompts, GREEDY, session_ids=[0, 1, 2], keep_cache=True)
    # two sessions go on (one waits this turn out), each with its answer and new text appended
    grown = [prompts[i] + first[i].token_ids + [11, 12 + i] for i in (0, 2)]
    prefilled = cached.stats.prefill_tokens
    again = cached.generate(grown, GREEDY, session_ids=[0, 2], keep_cache=True)
    # only the new suffix was prefilled: the last sampled token of turn 1 and the two appended ids
    assert cached.stats.prefill_tokens - prefilled == 2 * 3
    ref = fresh.generate(grown, GREEDY)
    for a, r in zip(again, ref, strict=True):
        assert a.token_ids == r.token_ids
        assert a.logprobs == pytest.approx(r.logprobs, abs=TOL)
    # every row holds exactly its own tokens: no padding columns, whatever the batch went through
    held = dict(zip(cached._keys, cached._tokens, strict=True))
    assert cached._cache.lengths == [len(t) for t in cached._tokens]
    for k, (g, a) in zip((0, 2), zip(grown, again, strict=True), strict=True):
        assert held[k] == g + a.token_ids[:-1]  # the last sampled token is fed next turn
    assert held[1] == prompts[1] + first[1].token_ids[:-1]  # the waiting session is kept as it was
    # the waiting session goes on later and still equals a fresh prefill
    later = prompts[1] + first[1].token_ids + [13]
    (b,) = cached.generate([later], GREEDY, session_ids=[1], keep_cache=True)
    (r,) = fresh.generate([later], GREEDY)
    assert b.token_ids == r.token_ids and b.logprobs == pytest.approx(r.logprobs, abs=TOL)


def test_a_session_whose_prompt_does_not_extend_its_cache_starts_over(model_tok):
    model, tok = model_tok
    gen = HFGenerator(model, tok)
    prompts = _prompts(tok)
    gen.generate(prompts[:1], GREEDY, session_ids=["a"], keep_cache=True)
    (b,) = gen.generate(prompts[1:2], GREEDY, session_ids=["a"], keep_cache=True)
    assert b.token_ids == HFGenerator(model, tok).generate(prompts[1:2], GREEDY)[0].token_ids
    gen.end_sessions(["a"])
    assert gen._keys == [] and gen._cache.lengths == []


def test_finished_rows_leave_the_decode_batch(model_tok):
    """Rows stop at different steps (the stop word is biased in, so some rows stop early): each row is
    run once per token it still needs, and results equal the one-by-one reference."""
    _, tok = model_tok
    stop_word = tok("look", add_special_tokens=False)["input_ids"]
    assert len(stop_word) == 1
    model = biased_model({stop_word[0]: 0.7}, seed=3).double()  # rows stop after 1, 3 and 12 tokens
    params = SamplingParams(greedy=True, max_new_tokens=12, stop_strings=("look",))
    gen = HFGenerator(model, tok)
    prompts = _prompts(tok) + [tok("look", add_special_tokens=False)["input_ids"] * 3]
    outs = gen.generate(prompts, params)
    lengths = [len(o.token_ids) for o in outs]
    assert len(set(lengths)) > 1, "the test needs rows that finish at different steps"
    for p, o in zip(prompts, outs, strict=True):
        ref = HFGenerator(model, tok).generate([p], params)[0]
        assert o.token_ids == ref.token_ids and o.stopped == ref.stopped
        assert o.stopped == (o.token_ids[-1] == stop_word[0])
    s = gen.stats
    assert s.generated_tokens == sum(lengths)
    # each row's first token comes from the prefill; later tokens take one decode row-step each
    assert s.decode_row_steps == sum(lengths) - len(prompts)
    assert s.decode_steps == max(lengths) - 1
    assert s.host_bytes <= 64 * len(prompts) * (s.decode_steps + 1)


def test_stop_strings_are_matched_on_token_ids(model_tok):
    _, tok = model_tok
    gen = HFGenerator(tiny_model(seed=0), tok)

    def flags(*texts):
        rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
        return gen._stop_flags(ids, ("</action>",)).tolist()

    assert flags("<action>look</action>", "<action>look", "look</action>.") == [True, False, True]
    assert gen._stop_flags(torch.tensor([[5, 6]]), ()).tolist() == [False]


def test_padded_vocabulary_rows_are_never_sampled():
    tok = tiny_tokenizer()
    model = tiny_model(seed=1, vocab_size=len(tok) + 64)
    with torch.no_grad():  # make a padded row the argmax everywhere
        model.get_output_embeddings().weight[len(tok) + 5] = model.get_output_embeddings().weight[7] * 50
    out = HFGenerator(model, tok).generate(_prompts(tok), GREEDY)
    assert all(t < len(tok) for o in out for t in o.token_ids)


def test_eager_attention_gives_the_same_tokens(model_tok):
    model, tok = model_tok
    eager = tiny_model(seed=3).double()
    eager.config._attn_implementation = "eager"
    a = HFGenerator(model, tok).generate(_prompts(tok), GREEDY)
    b = HFGenerator(eager, tok).generate(_prompts(tok), GREEDY)
    # transformers' eager attention takes its softmax in float32: log-probs agree to float32 rounding
    tol = 64 * torch.finfo(torch.float32).eps * max(abs(v) for x in a for v in x.logprobs)
    for x, y in zip(a, b, strict=True):
        assert x.token_ids == y.token_ids and x.logprobs == pytest.approx(y.logprobs, abs=tol)


def test_unsupported_attention_implementation_is_refused(model_tok):
    _, tok = model_tok
    model = tiny_model(seed=0)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="flash_attention_2.*sdpa"):
        HFGenerator(model, tok)


def test_sampling_is_seeded(model_tok):
    model, tok = model_tok
    params = SamplingParams(temperature=1.0, max_new_tokens=8, stop_strings=())
    a = HFGenerator(model, tok, seed=7).generate(_prompts(tok), params)
    b = HFGenerator(model, tok, seed=7).generate(_prompts(tok), params)
    c = HFGenerator(model, tok, seed=8).generate(_prompts(tok), params)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.token_ids for g in a] != [g.token_ids for g in c]


def test_sampled_logprobs_are_those_of_the_sampling_distribution(model_tok):
    model, tok = model_tok
    params = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=6, stop_strings=())
    prompts = _prompts(tok)
    for p, g in zip(prompts, HFGenerator(model, tok, seed=2).generate(prompts, params), strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([p + g.token_ids])).logits[0, len(p) - 1 : -1]
        ref = sampling_logprobs(logits, params).gather(1, torch.tensor(g.token_ids)[:, None]).squeeze(1)
        assert g.logprobs == pytest.approx(ref.tolist(), abs=1e-6)  # float32 sampling arithmetic


def test_pick_tokens_stays_on_the_logits_device_and_respects_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]] * 2000))
    rng = torch.Generator().manual_seed(0)
    tok, lp = pick_tokens(logits, SamplingParams(top_p=0.7), rng)
    assert tok.device == logits.device and tok.shape == (2000,) and lp.dtype == torch.float32
    assert set(tok.tolist()) == {0, 1}  # token 2 is outside the nucleus
    share = (tok == 0).double().mean().item()
    assert abs(share - 0.625) < 5 * math.sqrt(0.625 * 0.375 / 2000)  # 5 standard errors


def test_top_p_logprobs_renormalise_over_the_nucleus():
    # p = (0.5, 0.3, 0.2); top_p = 0.7 keeps {0, 1} -> (0.625, 0.375), token 2 impossible
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    lp = sampling_logprobs(logits, SamplingParams(top_p=0.7))
    assert lp[0, 0].item() == pytest.approx(math.log(0.625), abs=1e-6)
    assert lp[0, 1].item() == pytest.approx(math.log(0.375), abs=1e-6)
    assert lp[0, 2].item() == -math.inf
    # temperature 2 on the same logits: softmax(log p / 2) ~ sqrt(p)
    lp2 = sampling_logprobs(logits, SamplingParams(temperature=2.0))
    z = sum(math.sqrt(p) for p in (0.5, 0.3, 0.2))
    assert lp2[0, 2].item() == pytest.approx(math.log(math.sqrt(0.2) / z), abs=1e-6)


@pytest.mark.parametrize("bad", [{"temperature": 0.0}, {"top_p": 0.0}, {"max_new_tokens": 0}])
def test_bad_sampling_params_are_rejected(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingParams(**bad)


@pytest.mark.parametrize("q, masked", [(1, True), (3, True), (6, True), (5, False)])
def test_grouped_attention_equals_repeated_heads(q, masked):
    """The rollout's attention reads each key/value head once for its group of query heads; it must equal
    SDPA on explicitly repeated heads (float64), for decode (q=1), masked chunks and a fresh causal prefill."""
    from sage.rollout.attention import grouped_sdpa

    g = torch.Generator().manual_seed(q)
    b, hkv, rep, d = 3, 2, 3, 8
    s = q + b + 2 if masked else q  # every query row keeps at least one key
    query = torch.randn(b, hkv * rep, q, d, generator=g, dtype=torch.float64)
    key, value = (torch.randn(b, hkv, s, d, generator=g, dtype=torch.float64) for _ in range(2))
    mask = None
    if masked:  # ragged rows: row r owns its first s - r columns; query j sits at column s - r - q + j
        own = torch.tensor([s - r for r in range(b)])
        pos = own[:, None] - q + torch.arange(q)[None, :]
        mask = (torch.arange(s)[None, None, :] <= pos[:, :, None])[:, None]
    out, _ = grouped_sdpa(None, query, key, value, mask, scaling=0.3)
    ref = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1), attn_mask=mask, scale=0.3,
        is_causal=not masked,
    ).transpose(1, 2)
    torch.testing.assert_close(out, ref, rtol=0, atol=64 * torch.finfo(torch.float64).eps)


def test_a_session_that_joins_after_others_were_cached_equals_a_fresh_prefill(model_tok):
    """Sessions may start at any call (the teacher-data policy lets the model answer only some turns):
    a new session added next to cached ones, then moved in the cache, still generates exactly."""
    model, tok = model_tok
    cached, fresh = HFGenerator(model, tok), HFGenerator(model, tok)
    a, b, c = _prompts(tok)
    (first,) = cached.generate([a], GREEDY, session_ids=[0], keep_cache=True)
    joined = cached.generate([b, c], GREEDY, session_ids=[1, 2], keep_cache=True)  # 0 waits; 1, 2 are new
    for got, ref in zip(joined, fresh.generate([b, c], GREEDY), strict=True):
        assert got.token_ids == ref.token_ids and got.logprobs == pytest.approx(ref.logprobs, abs=TOL)
    later = a + first.token_ids + [11]
    (again,) = cached.generate([later], GREEDY, session_ids=[0], keep_cache=True)
    (ref,) = fresh.generate([later], GREEDY)
    assert again.token_ids == ref.token_ids and again.logprobs == pytest.approx(ref.logprobs, abs=TOL)
