"""Chunked fp32-head token loss (sage.distill.fused) against the unchunked reference path.

The reference is today's path: the head module's own forward on all N tokens, then
``token_divergence`` / ``teacher_confidence`` / ``target_logprobs`` on the full [N, V] logits.
Code paths are compared in float64, so the only allowed difference is float64 rounding.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sage.distill.confidence import teacher_confidence
from sage.distill.divergence import target_logprobs, token_divergence
from sage.distill.fused import chunked_token_loss, head_logits, teacher_token_stats
from sage.distill.loss_kinds import LOSS_KINDS

F64 = torch.float64
N, H_S, H_T, V = 7, 5, 6, 11  # student / teacher hidden sizes differ; V = shared vocabulary
# Same float64 ops on both sides, summed in a different order (chunks, matmul blocking): errors are
# a few eps per term, over at most N tokens x V columns x H products.
TOL = 4 * (N + V + H_S + H_T) * torch.finfo(F64).eps
CASES = [  # (kind, beta)
    ("reverse_kl", 0.5), ("forward_kl", 0.5), ("jsd", 0.3), ("jsd", 0.0), ("jsd", 1.0),
    ("sampled_reverse_kl", 0.5), ("sft", 0.5),
]
CHUNKS = [1, 3, N, N + 5]
assert {kind for kind, _ in CASES} == set(LOSS_KINDS)


def make(head_kind: str = "plain", seed: int = 0):
    """Student/teacher float64 heads with padded vocabularies (junk rows beyond V) and their inputs."""
    g = torch.Generator().manual_seed(seed)
    s_head = nn.Linear(H_S, V + 2, bias=head_kind == "bias", dtype=F64)
    t_head = nn.Linear(H_T, V + 3, bias=True, dtype=F64)
    emb = None
    with torch.no_grad():
        for p in [*s_head.parameters(), *t_head.parameters()]:
            p.copy_(3 * torch.randn(p.shape, generator=g, dtype=F64))
    if head_kind == "tied":  # output embedding shared with the input embedding, which feeds s_hidden
        emb = nn.Embedding(V + 2, H_S, dtype=F64)
        s_head.weight = emb.weight
    base = torch.randn(N, H_S, generator=g, dtype=F64, requires_grad=True)
    t_hidden = torch.randn(N, H_T, generator=g, dtype=F64)
    targets = torch.randint(0, V, (N,), generator=g)
    weights = torch.rand(N, generator=g, dtype=F64) + 0.5

    def s_hidden():
        return torch.tanh(base) + (0 if emb is None else emb(targets))

    return s_head, t_head, emb, base, s_hidden, t_hidden, targets, weights


def reference(s_hidden, s_head, t_hidden, t_head, targets, weights, kind, beta=0.5, temperature=1.0,
              teacher_target_logprobs=None):
    z_s = s_head(s_hidden)[None, :, :V]
    if kind == "sft":
        loss = -target_logprobs(z_s, targets[None], temperature)
    else:
        z_t = None if t_hidden is None else t_head(t_hidden)[None, :, :V]
        tlp = None if teacher_target_logprobs is None else teacher_target_logprobs[None]
        loss = token_divergence(z_s, z_t, targets[None], kind, beta, temperature, tlp)
    return (weights * loss[0]).sum()


def grads(loss, params):
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("head_kind", ["plain", "bias", "tied"])
@pytest.mark.parametrize("kind,beta", CASES)
def test_value_and_gradients_match_unchunked(kind, beta, head_kind):
    s_head, t_head, emb, base, s_hidden, t_hidden, targets, weights = make(head_kind)
    temperature = 0.7 if head_kind == "bias" else 1.0
    params = [base, *s_head.parameters()]
    ref = reference(s_hidden(), s_head, t_hidden, t_head, targets, weights, kind, beta, temperature)
    ref_grads = grads(ref, params)
    assert ref.abs() > 0.1  # a non-trivial loss
    for chunk in CHUNKS:
        out = chunked_token_loss(s_hidden(), s_head, t_hidden, t_head, targets, weights, kind, beta=beta,
                                 temperature=temperature, vocab_rows=V, chunk_tokens=chunk)
        assert out.dtype == F64 and out.dim() == 0
        torch.testing.assert_close(out, ref, rtol=TOL, atol=TOL)
        for got, want in zip(grads(out, params), ref_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)


def test_teacher_gets_no_gradient_and_default_vocab_is_shared_rows():
    s_head, t_head, _, base, s_hidden, t_hidden, targets, weights = make()
    t_hidden = t_hidden.clone().requires_grad_(True)
    out = chunked_token_loss(s_hidden(), s_head, t_hidden, t_head, targets, weights, "reverse_kl", chunk_tokens=3)
    out.backward()
    assert t_hidden.grad is None and t_head.weight.grad is None
    z_s, z_t = s_head(s_hidden()), t_head(t_hidden)  # V + 2 and V + 3 rows: V + 2 are shared
    expected = (weights * token_divergence(z_s, z_t, None, "reverse_kl")).sum()
    torch.testing.assert_close(out, expected, rtol=TOL, atol=TOL)


def test_sampled_reverse_kl_from_given_teacher_logprobs():
    s_head, t_head, _, base, s_hidden, t_hidden, targets, weights = make(seed=1)
    tlp = torch.randn(N, dtype=F64) - 2.0
    ref = reference(s_hidden(), s_head, None, None, targets, weights, "sampled_reverse_kl",
                    teacher_target_logprobs=tlp)
    out = chunked_token_loss(s_hidden(), s_head, None, None, targets, weights, "sampled_reverse_kl",
                             vocab_rows=V, chunk_tokens=2, teacher_target_logprobs=tlp)
    torch.testing.assert_close(out, ref, rtol=TOL, atol=TOL)
    torch.testing.assert_close(grads(out, [base])[0], grads(ref, [base])[0], rtol=TOL, atol=TOL)


@pytest.mark.parametrize("kind,beta", CASES)
def test_weight_zero_rows_contribute_nothing_even_if_poisoned(kind, beta):
    s_head, t_head, _, base, s_hidden, t_hidden, targets, weights = make(seed=2)
    dead = torch.tensor([1, 4])
    weights, targets, t_hidden = weights.clone(), targets.clone(), t_hidden.clone()
    weights[dead] = 0.0
    targets[dead] = -100
    t_hidden[1], t_hidden[4] = math.inf, math.nan
    poison = torch.zeros(N, H_S, dtype=F64)
    poison[1], poison[4] = math.nan, math.inf
    params = [base, *s_head.parameters()]
    live = torch.tensor([i for i in range(N) if i not in dead.tolist()])
    ref = reference(s_hidden()[live], s_head, t_hidden[live], t_head, targets[live], weights[live], kind, beta)
    ref_grads = grads(ref, params)
    for chunk in (1, 3, N):
        out = chunked_token_loss(s_hidden() + poison, s_head, t_hidden, t_head, targets, weights, kind,
                                 beta=beta, vocab_rows=V, chunk_tokens=chunk)
        got = grads(out, params)
        torch.testing.assert_close(out, ref, rtol=TOL, atol=TOL)
        for g, want in zip(got, ref_grads, strict=True):
            torch.testing.assert_close(g, want, rtol=TOL, atol=TOL)
        assert (got[0][dead] == 0).all()
    # the unchunked path multiplying by zero weights would be poisoned: the test above can fail
    naive = reference(s_hidden() + poison, s_head, t_hidden, t_head, targets.clamp(min=0), weights, kind, beta)
    assert not torch.isfinite(naive)


def test_all_weights_zero_gives_zero_with_zero_gradients():
    s_head, t_head, _, base, s_hidden, t_hidden, targets, _ = make()
    out = chunked_token_loss(s_hidden(), s_head, t_hidden, t_head, targets, torch.zeros(N, dtype=F64),
                             "reverse_kl")
    assert out.item() == 0.0
    g_base, g_w = grads(out, [base, s_head.weight])
    assert (g_base == 0).all() and (g_w == 0).all()  # zeros, not None: DDP sees every parameter used


@pytest.mark.parametrize("confidence", ["max_prob", "neg_entropy", "none"])
@pytest.mark.parametrize("chunk", CHUNKS)
def test_teacher_token_stats_match_full_logits(confidence, chunk):
    _, t_head, _, _, _, t_hidden, targets, _ = make(seed=3)
    z = t_head(t_hidden)[None, :, :V].detach()
    kappa, logp = teacher_token_stats(t_hidden, t_head, targets, V, temperature=1.3,
                                      confidence=confidence, chunk_tokens=chunk)
    torch.testing.assert_close(kappa, teacher_confidence(z, confidence, temperature=1.3)[0],
                               rtol=TOL, atol=TOL, check_dtype=False)
    torch.testing.assert_close(logp, target_logprobs(z, targets[None], 1.3)[0], rtol=TOL, atol=TOL)
    assert not kappa.requires_grad and not logp.requires_grad


class LoraLikeHead(nn.Linear):
    """A Linear subclass with its own forward (like peft's LoRA wrapper): takes the fallback path."""

    def __init__(self, h, v):
        super().__init__(h, v, bias=False, dtype=F64)
        self.a = nn.Parameter(torch.randn(2, h, dtype=F64))
        self.b = nn.Parameter(torch.randn(v, 2, dtype=F64))

    def forward(self, x):
        return F.linear(x, self.weight) + x @ self.a.T @ self.b.T


def test_non_linear_head_falls_back_to_its_forward():
    _, t_head, _, base, s_hidden, t_hidden, targets, weights = make(seed=4)
    head = LoraLikeHead(H_S, V + 2)
    ref = reference(s_hidden(), head, t_hidden, t_head, targets, weights, "forward_kl")
    out = chunked_token_loss(s_hidden(), head, t_hidden, t_head, targets, weights, "forward_kl",
                             vocab_rows=V, chunk_tokens=3)
    torch.testing.assert_close(out, ref, rtol=TOL, atol=TOL)
    params = [base, head.a, head.b]
    for got, want in zip(grads(out, params), grads(ref, params), strict=True):
        torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)


def test_bad_arguments_raise_clear_errors():
    s_head, t_head, _, _, s_hidden, t_hidden, targets, weights = make()
    s = s_hidden()

    def call(**kw):
        args = dict(s_hidden=s, s_head=s_head, t_hidden=t_hidden, t_head=t_head, targets=targets,
                    weights=weights, kind="reverse_kl")
        return chunked_token_loss(**{**args, **kw})

    with pytest.raises(ValueError, match=r"'kl'.*reverse_kl.*sft"):
        call(kind="kl")
    with pytest.raises(ValueError, match="temperature"):
        call(temperature=0.0)
    with pytest.raises(ValueError, match="chunk_tokens"):
        call(chunk_tokens=0)
    with pytest.raises(ValueError, match="vocab_rows"):
        call(vocab_rows=V + 3)  # the student head has V + 2 rows
    with pytest.raises(ValueError, match="weights"):
        call(weights=weights[:-1])
    with pytest.raises(ValueError, match="t_hidden"):
        call(t_hidden=t_hidden[:-1])
    with pytest.raises(ValueError, match="needs t_hidden"):
        call(t_hidden=None)
    with pytest.raises(ValueError, match="needs targets"):
        call(kind="sampled_reverse_kl", targets=None)
    with pytest.raises(ValueError, match="beta"):
        call(kind="jsd", beta=1.5)
    with pytest.raises(ValueError, match="hidden size"):
        call(s_hidden=torch.zeros(N, H_S + 1, dtype=F64))
    with pytest.raises(ValueError, match="confidence"):
        teacher_token_stats(t_hidden, t_head, targets, confidence="entropy")


# -- precision under bf16 autocast -------------------------------------------------------------------


def test_fp32_head_is_accurate_under_bf16_autocast():
    """Today's path rounds logits to bf16 (spacing 0.125 in [16, 32)); the fp32 head does not.

    Hidden states and weights are bf16-valued (as under autocast), so the float64 reference sees
    exactly the numbers both paths start from. Error budget of the fp32 path per token: logits and
    log-softmax each carry a few float32 ulps of max|z| + log V, KL differences two log-probabilities,
    so |error| <= 16 * eps32 * (max|z| + log V) (4x margin).
    """
    torch.manual_seed(0)
    n, h, v = 64, 256, 8192

    def bf(x):
        return x.bfloat16().float()

    x = torch.randn(n, h)
    x[:, 0] = 1.0
    hs, ht = bf(x), bf(x + 0.3 * torch.randn(n, h))
    ht[:, 0] = 1.0
    base = torch.randn(v, h) * 4.0 / math.sqrt(h)
    base[:, 0] = 8.0  # shifts every logit by +8: realistic magnitudes, logits in about [-10, 30]
    s_head, t_head = nn.Linear(h, v, bias=False), nn.Linear(h, v, bias=False)
    with torch.no_grad():
        s_head.weight.copy_(bf(base + 0.5 * torch.randn(v, h) / math.sqrt(h)))
        t_head.weight.copy_(bf(base))
    with torch.no_grad():
        z_s, z_t = hs.double() @ s_head.weight.double().T, ht.double() @ t_head.weight.double().T
    assert -20 < z_s.min() < -5 and 25 < z_s.max() < 40
    tol = 16 * torch.finfo(torch.float32).eps * (float(z_s.abs().max()) + math.log(v))
    weights = torch.ones(n)
    for kind in ("reverse_kl", "forward_kl", "jsd"):
        ref = token_divergence(z_s, z_t, None, kind)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            old = token_divergence(s_head(hs.bfloat16()), t_head(ht.bfloat16()), None, kind)
            new = token_divergence(head_logits(hs.bfloat16(), s_head, None),
                                   head_logits(ht.bfloat16(), t_head, None), None, kind)
            total = chunked_token_loss(hs.bfloat16(), s_head, ht.bfloat16(), t_head, None, weights, kind,
                                       chunk_tokens=16)
        old_err, new_err = (old.double() - ref).abs(), (new.double() - ref).abs()
        assert new.dtype == torch.float32 and total.dtype == torch.float32
        assert new_err.max() <= tol, (kind, float(new_err.max()), tol)
        assert old_err.mean() > 100 * new_err.mean(), (kind, float(old_err.mean()), float(new_err.mean()))
        assert abs(total.item() - ref.sum().item()) <= n * tol


# -- memory: what autograd keeps between forward and backward ----------------------------------------


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for backward while fn() runs (views counted at their size)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


@pytest.mark.parametrize("kind", ["reverse_kl", "jsd", "sampled_reverse_kl"])
def test_checkpointed_chunks_save_inputs_not_logits(kind):
    h_s, h_t, v, chunk = 16, 24, 2048, 32
    s_head, t_head = nn.Linear(h_s, v), nn.Linear(h_t, v)

    def run(n, chunked):
        s_hidden = torch.randn(n, h_s, requires_grad=True)
        t_hidden, targets, weights = torch.randn(n, h_t), torch.randint(0, v, (n,)), torch.rand(n)
        if chunked:
            return saved_bytes(lambda: chunked_token_loss(s_hidden, s_head, t_hidden, t_head, targets, weights,
                                                          kind, chunk_tokens=chunk))
        return saved_bytes(lambda: reference_full(s_hidden, s_head, t_hidden, t_head, targets, weights, kind))

    def reference_full(s_hidden, s_head, t_hidden, t_head, targets, weights, kind):
        with torch.no_grad():
            z_t = t_head(t_hidden)
        return (weights * token_divergence(s_head(s_hidden), z_t, targets, kind)).sum()

    small, large = 256, 1024
    naive = run(large, chunked=False)
    assert naive > 2 * large * v * 4  # the counter sees the [N, V] tensors of today's path
    per_token = (run(large, True) - run(small, True)) / (large - small)
    # per token: the chunk inputs (student and teacher hidden states, weight, target, fp32/int64)
    assert per_token <= (h_s + h_t + 4) * 4, per_token
    # what does not grow with N (head weights, one chunk) stays far below one [N, V] logits tensor
    assert run(small, True) - small * per_token < 0.1 * small * v * 4
