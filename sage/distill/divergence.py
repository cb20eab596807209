"""Per-token divergences between the student and the frozen teacher (docs/METHOD.md, "Token loss").

Every function returns one value per position, ``[B, T]``; masking, gating, confidence weighting and
normalization happen later in :mod:`sage.distill.objective`, so nothing here reduces over tokens.

Conventions shared by all kinds:

* Both logits are divided by ``temperature`` before the softmax.
* Teacher and student may carry different padded vocabularies (Qwen2.5: 152064 vs 151936 rows); the
  shared first ``min(V_s, V_T)`` rows are used. Padding rows are never real tokens, so this is exact.
* Computation runs in float32 (float64 stays float64) whatever the logits' dtype, so bf16 logits do not
  lose the small differences a KL is made of.
* The teacher is always detached: gradients reach the student only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from sage.specs import DIVERGENCES, check_choice, check_range, check_temperature
from sage.upcast import upcast

# Log-probabilities are clamped here so that -inf logits (vocab masking) give 0 * finite = 0 instead of NaN.
_LOG_FLOOR = -1e30


def _check_kind(kind: str) -> None:
    check_choice("divergence", kind, DIVERGENCES)


def _log_probs(logits: Tensor, temperature: float, vocab: int) -> Tensor:
    logits = upcast(logits[..., :vocab])
    if temperature != 1.0:
        logits = logits / temperature
    return F.log_softmax(logits, dim=-1).clamp(min=_LOG_FLOOR)


def _kl(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(p || q) summed over the last dim, from log-probabilities."""
    return (logp.exp() * (logp - logq)).sum(dim=-1)


def target_logprobs(logits: Tensor, target_ids: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature)[target] per position, ``[B, T]`` in float32 (or float64).

    Negative ids (e.g. the ``-100`` ignore label on padding) read row 0; their value is meaningless and
    must be masked by the caller. Ids beyond the vocabulary raise instead of silently reading garbage.
    """
    check_temperature(temperature)
    vocab = logits.shape[-1]
    if target_ids.shape != logits.shape[:-1]:
        raise ValueError(
            f"target_ids shape {tuple(target_ids.shape)} != logits shape {tuple(logits.shape[:-1])}"
        )
    if target_ids.numel() and int(target_ids.max()) >= vocab:
        raise ValueError(
            f"target id {int(target_ids.max())} is outside the (shared) vocabulary of {vocab} rows"
        )
    ids = target_ids.long().clamp(min=0).unsqueeze(-1)
    return _log_probs(logits, temperature, vocab).gather(-1, ids).squeeze(-1)


def _sampled_parts(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    target_ids: Tensor,
    temperature: float,
    teacher_target_logprobs: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """(log pi_s(y) with grad, log pi_T(y) detached) on the sampled tokens."""
    if target_ids is None:
        raise ValueError("sampled_reverse_kl needs target_ids (the sampled response tokens)")
    if teacher_target_logprobs is not None:
        # Precomputed by the teacher scorer: used as given (it owns the temperature it was scored at).
        vocab = student_logits.shape[-1]
        if teacher_logits is not None:
            vocab = min(vocab, teacher_logits.shape[-1])
        logp_t = upcast(teacher_target_logprobs.detach())
    elif teacher_logits is not None:
        vocab = min(student_logits.shape[-1], teacher_logits.shape[-1])
        logp_t = target_logprobs(teacher_logits.detach()[..., :vocab], target_ids, temperature)
    else:
        raise ValueError("sampled_reverse_kl needs teacher_logits or teacher_target_logprobs")
    logp_s = target_logprobs(student_logits[..., :vocab], target_ids, temperature)
    if logp_t.shape != logp_s.shape:
        raise ValueError(
            f"teacher_target_logprobs shape {tuple(logp_t.shape)} != target shape {tuple(logp_s.shape)}"
        )
    return logp_s, logp_t.to(logp_s.dtype)


def token_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    target_ids: Tensor | None,
    kind: str = "reverse_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    teacher_target_logprobs: Tensor | None = None,
) -> Tensor:
    """Per-token distillation loss ``l[b, t]`` (``[B, T]``) between student and teacher.

    With p_s = softmax(z_s / temperature), p_T = softmax(z_T / temperature) on the shared vocabulary:

    * ``reverse_kl``: KL(p_s || p_T) = sum_v p_s (log p_s - log p_T), full vocabulary (mode seeking).
    * ``forward_kl``: KL(p_T || p_s) = sum_v p_T (log p_T - log p_s) (mode covering).
    * ``jsd``: generalized JSD of GKD (Agarwal et al. 2024), in TRL's ``generalized_jsd_loss`` convention::

          M        = beta * p_T + (1 - beta) * p_s          (log M by logsumexp)
          JSD_beta = beta * KL(p_T || M) + (1 - beta) * KL(p_s || M)

      As beta -> 0, JSD_beta / beta -> KL(p_T || p_s) (forward); as beta -> 1,
      JSD_beta / (1 - beta) -> KL(p_s || p_T) (reverse). The mixture form itself vanishes at the
      endpoints, so ``beta == 0`` returns ``forward_kl`` and ``beta == 1`` returns ``reverse_kl``
      exactly (as TRL does). Mind the scale jump: near an endpoint the mixture form is only about
      beta (resp. 1 - beta) times the KL it approaches.
    * ``sampled_reverse_kl``: one-sample estimate on the sampled token y = ``target_ids``,
      r = log p_s(y) - log p_T(y), trained in policy-gradient form (advantage -r, Thinking Machines
      on-policy distillation). The returned surrogate is ``r' + r' * (log p_s(y) - sg(log p_s(y)))`` with
      r' = sg(r): its *value* is r (so logged losses read as a KL estimate) and its *gradient* is
      ``r * grad log p_s(y)``, the same as ``sg(r) * log p_s(y)``. The teacher term may be given as
      ``teacher_target_logprobs [B, T]`` (then ``teacher_logits`` may be None); it is used as given.

    ``target_ids`` is only read by ``sampled_reverse_kl`` (may be None for the other kinds).
    """
    _check_kind(kind)
    check_temperature(temperature)
    check_range("beta", beta, 0.0, 1.0)

    if kind == "sampled_reverse_kl":
        logp_s, logp_t = _sampled_parts(
            student_logits, teacher_logits, target_ids, temperature, teacher_target_logprobs
        )
        ratio = (logp_s - logp_t).detach()
        return ratio + ratio * (logp_s - logp_s.detach())

    if teacher_logits is None:
        raise ValueError(f"divergence {kind!r} needs teacher_logits (full distributions)")
    if teacher_logits.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(
            f"teacher logits {tuple(teacher_logits.shape)} do not align with student logits "
            f"{tuple(student_logits.shape)}"
        )
    vocab = min(student_logits.shape[-1], teacher_logits.shape[-1])
    logp_s = _log_probs(student_logits, temperature, vocab)
    logp_t = _log_probs(teacher_logits.detach(), temperature, vocab).to(logp_s.dtype)

    if kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
        return _kl(logp_s, logp_t)
    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        return _kl(logp_t, logp_s)
    log_m = torch.logsumexp(torch.stack([logp_t + math.log(beta), logp_s + math.log1p(-beta)]), dim=0)
    return beta * _kl(logp_t, log_m) + (1.0 - beta) * _kl(logp_s, log_m)
