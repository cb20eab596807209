"""Teacher confidence kappa per token (docs/METHOD.md, "Teacher confidence").

Distillation terms on positions where the teacher itself is unsure (drifted or ambiguous histories)
are down-weighted by kappa. kappa is a weight, not something to optimise: it is always detached.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from sage.specs import CONFIDENCE_KINDS, check_choice, check_temperature
from sage.upcast import upcast


@torch.no_grad()
def teacher_confidence(teacher_logits: Tensor, kind: str = "max_prob", temperature: float = 1.0) -> Tensor:
    """kappa ``[..., T]`` (float32, float64 for float64 logits; detached) from teacher logits ``[..., T, V]``.

    * ``max_prob``: max_v pi_T(v) (in (1/V, 1]).
    * ``neg_entropy``: 1 - H(pi_T) / log V (0 for a uniform teacher, 1 for a one-hot one).
    * ``none``: 1 everywhere (the "no confidence" ablation).

    V is the last dim as given: slice padded vocab rows off beforehand, or neg_entropy's log V is off.
    The per-turn part (turn average, floor) is `finish_confidence`.
    """
    check_choice("confidence kind", kind, CONFIDENCE_KINDS)
    check_temperature(temperature)
    shape = teacher_logits.shape[:-1]
    if kind == "none":
        return torch.ones(shape, dtype=torch.float32, device=teacher_logits.device)
    logits = teacher_logits.detach()
    logits = upcast(logits)
    logp = F.log_softmax(logits / temperature, dim=-1)
    if kind == "max_prob":
        return logp.max(dim=-1).values.exp()
    vocab = teacher_logits.shape[-1]
    probs = logp.exp()
    entropy = -(probs * logp.clamp(min=-1e30)).sum(dim=-1)  # 0 * -inf -> 0 for masked vocab rows
    return 1.0 - entropy / math.log(vocab) if vocab > 1 else torch.ones_like(entropy)


def finish_confidence(kappa: Tensor, minimum: float = 0.0, turn_average: bool = False) -> Tensor:
    """One turn's kappa ``[n]`` (its response tokens): with ``turn_average`` every token's value replaced by
    the turn's mean, then the floor ``minimum`` (so every returned value is >= minimum)."""
    if turn_average and kappa.numel():
        kappa = (kappa.sum() / kappa.numel()).expand_as(kappa)
    return kappa.clamp(min=minimum)
