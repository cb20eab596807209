"""Token loss straight from final hidden states: fp32 LM head, chunks of tokens, recomputation in backward.

Why: the plain path (LM head on the response positions, then full-vocabulary log-softmax for student and
teacher) keeps several ``[N, V]`` float32 tensors alive for backward -- about 6 GB per 1,000 response
tokens at V = 152k -- and under bf16 autocast the head emits bf16 logits (spacing 0.125 in [16, 32)),
which moves a KL by a few hundredths of a nat per token. Here the head runs in float32 with autocast
off, and each chunk of ``chunk_tokens`` tokens is wrapped in a non-reentrant checkpoint: only the
chunk's hidden states are kept, and its ``[chunk, V]`` intermediates are rebuilt during backward. Peak
extra memory is then a few ``chunk x V x 4`` bytes whatever N is, for one extra head forward per chunk.

The per-chunk math is :func:`sage.distill.divergence.token_divergence`, ``target_logprobs`` and
:func:`sage.distill.confidence.teacher_confidence` on ``[chunk, V]`` logits: one definition of each
divergence and confidence, whichever path computes it.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from sage.distill.confidence import teacher_confidence
from sage.distill.divergence import target_logprobs, token_divergence
from sage.distill.loss_kinds import LOSS_KINDS
from sage.specs import CONFIDENCE_KINDS, check_choice, check_range, check_temperature
from sage.upcast import compute_dtype, upcast


def _is_plain_linear(head: torch.nn.Module) -> bool:
    """nn.Linear whose forward is the stock one: subclasses that override it (peft, quantized) are not."""
    return isinstance(head, torch.nn.Linear) and type(head).forward is torch.nn.Linear.forward


def _head_rows(head: torch.nn.Module) -> int | None:
    w = getattr(head, "weight", None)
    return int(w.shape[0]) if isinstance(w, Tensor) and w.dim() == 2 else None


def _no_autocast(device: torch.device):
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _check_rows(vocab_rows: int | None, heads: list[torch.nn.Module]) -> int | None:
    """The logit columns to use: ``vocab_rows`` if given (checked against every head), else the rows all
    heads share (None when no head exposes a 2-d weight; the head output decides then)."""
    known = [r for r in (_head_rows(h) for h in heads) if r is not None]
    if vocab_rows is None:
        return min(known) if known else None
    if not 1 <= vocab_rows <= min(known, default=vocab_rows):
        raise ValueError(f"vocab_rows={vocab_rows} must be in [1, {min(known, default=vocab_rows)}] (head rows)")
    return vocab_rows


def head_logits(hidden: Tensor, head: torch.nn.Module, vocab_rows: int | None = None) -> Tensor:
    """float32 logits ``[n, V']`` (float64 for float64 inputs) from hidden states ``[n, H]``, V' = vocab_rows.

    A plain ``nn.Linear`` head (tied or not, with or without bias) runs as ``hidden.float() @
    W[:V'].float().T (+ b)`` with autocast off, so bf16 hidden states and bf16-valued weights give
    products that are exact in float32: the only error is float32 accumulation. Gradients reach
    ``hidden`` and W/bias (through the cast when the weights are bf16). A bf16 W costs a transient
    float32 copy of ``V' x H`` per call (2.2 GB for Qwen2.5-7B's head), on top of the chunk's logits.
    Caveat on CUDA: with TF32 matmuls on (``torch.backends.cuda.matmul.allow_tf32``,
    ``set_float32_matmul_precision("high")``) float32 weights that are not bf16-valued are rounded to
    TF32's 10-bit mantissa; bf16 values (and their products) stay exact.

    Any other head (e.g. a peft LoRA-wrapped ``lm_head``) is called as ``head(hidden)`` under the ambient
    autocast and its output is upcast: under bf16 autocast those logits keep bf16 rounding (no gain in
    precision there, only the chunking's memory gain).
    """
    rows = _head_rows(head)
    if vocab_rows is not None and rows is not None and not 1 <= vocab_rows <= rows:
        raise ValueError(f"vocab_rows={vocab_rows} must be in [1, {rows}] (the head's rows)")
    if _is_plain_linear(head):
        w, b = head.weight, head.bias
        if hidden.shape[-1] != w.shape[1]:
            raise ValueError(f"hidden size {hidden.shape[-1]} != head input size {w.shape[1]}")
        dtype = compute_dtype(hidden.dtype, w.dtype)
        v = rows if vocab_rows is None else vocab_rows
        with _no_autocast(hidden.device):
            return F.linear(hidden.to(dtype), w[:v].to(dtype), None if b is None else b[:v].to(dtype))
    out = head(hidden)
    if vocab_rows is not None:
        if vocab_rows > out.shape[-1]:
            raise ValueError(f"vocab_rows={vocab_rows} > the {out.shape[-1]} logits the head returns")
        out = out[..., :vocab_rows]
    return upcast(out)


def _check_common(temperature: float, chunk_tokens: int) -> None:
    check_temperature(temperature)
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be an int >= 1, got {chunk_tokens!r}")


def _check_tokens(name: str, x: Tensor | None, n: int, integer: bool = False) -> None:
    if x is None:
        return
    if tuple(x.shape) != (n,):
        raise ValueError(f"{name} must have shape [{n}] (one per token), got {tuple(x.shape)}")
    if integer and (x.is_floating_point() or x.is_complex()):
        raise ValueError(f"{name} must hold integer token ids, got {x.dtype}")


def _check_hidden(name: str, x: Tensor | None, n: int | None = None) -> None:
    if x is not None and (x.dim() != 2 or (n is not None and x.shape[0] != n)):
        want = "[N, H]" if n is None else f"[{n}, H]"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")


def _split(n: int, chunk: int, *xs: Tensor | None) -> list[tuple[Tensor | None, ...]]:
    """Chunks along dim 0 via ``split`` (one gradient concatenation, not one [N, H] buffer per chunk).
    An empty input still gives one empty chunk, so the result keeps a graph to the heads."""
    sizes = [chunk] * (n // chunk) + ([n % chunk] if n % chunk or n == 0 else [])
    parts = [(None,) * len(sizes) if x is None else x.split(sizes) for x in xs]
    return list(zip(*parts, strict=True))


@torch.no_grad()
def teacher_token_stats(
    t_hidden: Tensor,
    t_head: torch.nn.Module,
    targets: Tensor,
    vocab_rows: int | None = None,
    temperature: float = 1.0,
    confidence: str = "max_prob",
    chunk_tokens: int = 1024,
) -> tuple[Tensor, Tensor]:
    """(kappa ``[N]``, log softmax(z_T / T)[target] ``[N]``), float32, from teacher hidden states ``[N, H]``.

    Same definitions as :func:`teacher_confidence` (no floor, no turn averaging: the caller applies
    those) and :func:`target_logprobs`, chunk by chunk so only ``[chunk, V]`` logits ever exist.
    Negative targets (ignore labels) read column 0 and must be masked by the caller.
    """
    _check_common(temperature, chunk_tokens)
    check_choice("confidence kind", confidence, CONFIDENCE_KINDS)
    _check_hidden("t_hidden", t_hidden)
    n = t_hidden.shape[0]
    _check_tokens("targets", targets, n, integer=True)
    vocab = _check_rows(vocab_rows, [t_head])
    kappa, logp = [], []
    for h, y in _split(n, chunk_tokens, t_hidden, targets):
        z = head_logits(h, t_head, vocab)
        kappa.append(teacher_confidence(z, confidence, temperature=temperature))
        logp.append(target_logprobs(z, y, temperature))
    return torch.cat(kappa), torch.cat(logp)


def chunked_token_loss(
    s_hidden: Tensor,
    s_head: torch.nn.Module,
    t_hidden: Tensor | None,
    t_head: torch.nn.Module | None,
    targets: Tensor | None,
    weights: Tensor,
    kind: str,
    beta: float = 0.5,
    temperature: float = 1.0,
    vocab_rows: int | None = None,
    chunk_tokens: int = 1024,
    teacher_target_logprobs: Tensor | None = None,
) -> Tensor:
    """``sum_n weights[n] * l_n`` (float32 scalar; float64 for float64 inputs) from hidden states ``[N, H]``.

    ``l_n`` is :func:`token_divergence` of ``kind`` on the fp32 head logits of token n (same temperature,
    beta and endpoint conventions, teacher detached); a kind that reads no teacher (``sft``) is
    ``-log softmax(z_s / T)[y]`` (pass temperature 1 as the module does). What each kind needs is its row of
    `LOSS_KINDS`. ``weights`` (g * kappa, detached) are per token; rows with weight 0 are dropped before
    any math, so they add exactly 0 to value and gradients even if their hidden states are inf/NaN. A kind
    that reads ``teacher_logprobs`` takes them from ``teacher_target_logprobs [N]`` (as given) or computes
    them once, without grad, from ``t_hidden``.
    ``vocab_rows`` defaults to the rows both heads share (padded vocabularies).

    Each chunk runs under a non-reentrant checkpoint: only its inputs are saved and its ``[chunk, V]``
    intermediates are recomputed in backward (one more head forward per chunk, student and teacher).
    """
    check_choice("loss kind", kind, tuple(LOSS_KINDS))
    needs = LOSS_KINDS[kind]
    _check_common(temperature, chunk_tokens)
    check_range("beta", beta, 0.0, 1.0)
    _check_hidden("s_hidden", s_hidden)
    n = s_hidden.shape[0]
    _check_tokens("weights", weights, n)
    _check_tokens("targets", targets, n, integer=True)
    _check_tokens("teacher_target_logprobs", teacher_target_logprobs, n)
    if not needs.teacher:
        t_hidden, t_head, teacher_target_logprobs = None, None, None
    elif needs.teacher_logprobs and teacher_target_logprobs is not None:
        t_hidden = None  # the given log-probs are the teacher term
    elif t_hidden is None:
        need = "t_hidden or teacher_target_logprobs" if needs.teacher_logprobs else "t_hidden"
        raise ValueError(f"kind {kind!r} needs {need}")
    _check_hidden("t_hidden", t_hidden, n)
    if t_hidden is not None and t_head is None:
        raise ValueError("t_hidden is given without t_head")
    if needs.targets and targets is None:
        raise ValueError(f"kind {kind!r} needs targets (the sampled token ids)")
    vocab = _check_rows(vocab_rows, [s_head] + ([t_head] if t_hidden is not None else []))

    weights = weights.detach()
    keep = weights != 0
    if not bool(keep.all()):  # (a host sync) drop weight-0 rows: their inf/NaN reach neither value nor grads
        idx = keep.nonzero().squeeze(1)
        s_hidden, t_hidden, targets, weights, teacher_target_logprobs = (
            None if x is None else x.index_select(0, idx)
            for x in (s_hidden, t_hidden, targets, weights, teacher_target_logprobs)
        )
        n = int(idx.numel())
    if targets is not None and needs.targets and n and int(targets.min()) < 0:
        raise ValueError("a token with nonzero weight has a negative target id")
    if not needs.targets:
        targets = None  # unused: not worth saving for backward
    if needs.teacher_logprobs and t_hidden is not None:
        # Only log p_T(y) is needed: compute it once, so backward does not recompute the teacher head.
        _, teacher_target_logprobs = teacher_token_stats(
            t_hidden, t_head, targets, vocab, temperature, "none", chunk_tokens
        )
        t_hidden = None

    def chunk_loss(s_h: Tensor, t_h: Tensor | None, y: Tensor | None, w: Tensor, t_lp: Tensor | None) -> Tensor:
        z_s = head_logits(s_h, s_head, vocab)
        if not needs.teacher:
            loss = -target_logprobs(z_s, y, temperature)
        else:
            with torch.no_grad():
                z_t = None if t_h is None else head_logits(t_h, t_head, vocab)
            loss = token_divergence(z_s, z_t, y, kind, beta, temperature, t_lp)
        return (w.to(loss.dtype) * loss).sum()

    total = None
    for s_h, t_h, y, w, t_lp in _split(n, chunk_tokens, s_hidden, t_hidden, targets, weights,
                                       teacher_target_logprobs):
        if torch.is_grad_enabled():
            part = checkpoint(chunk_loss, s_h, t_h, y, w, t_lp, use_reentrant=False, preserve_rng_state=False)
        else:
            part = chunk_loss(s_h, t_h, y, w, t_lp)
        total = part if total is None else total + part
    return total
