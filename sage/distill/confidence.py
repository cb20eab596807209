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


def _turn_average(kappa: Tensor, valid: Tensor, turn_ids: Tensor | None) -> Tensor:
    """Replace kappa by its mean over the valid tokens of the same (row, turn); others keep their value."""
    if turn_ids is None:
        turn_ids = torch.zeros(kappa.shape, dtype=torch.long, device=kappa.device)
    turn_ids = turn_ids.long()
    if turn_ids.shape != kappa.shape:
        raise ValueError(f"turn_ids shape {tuple(turn_ids.shape)} != confidence shape {tuple(kappa.shape)}")
    in_turn = turn_ids >= 0
    valid = valid & in_turn
    n_turns = int(turn_ids.max().clamp(min=0)) + 1 if turn_ids.numel() else 1
    rows = torch.arange(kappa.shape[0], device=kappa.device).unsqueeze(-1)
    key = (rows * n_turns + turn_ids.clamp(min=0)).reshape(-1)  # one bucket per (row, turn)
    n_keys = kappa.shape[0] * n_turns
    zero = torch.zeros((), dtype=kappa.dtype, device=kappa.device)
    sums = torch.zeros(n_keys, dtype=kappa.dtype, device=kappa.device).index_add_(
        0, key, torch.where(valid, kappa, zero).reshape(-1)
    )
    counts = torch.zeros(n_keys, dtype=kappa.dtype, device=kappa.device).index_add_(
        0, key, valid.to(kappa.dtype).reshape(-1)
    )
    mean = (sums / counts.clamp(min=1)).gather(0, key).reshape(kappa.shape)
    has_mean = (counts > 0).gather(0, key).reshape(kappa.shape) & in_turn
    return torch.where(has_mean, mean, kappa)


@torch.no_grad()
def teacher_confidence(
    teacher_logits: Tensor,
    kind: str = "max_prob",
    minimum: float = 0.0,
    turn_average: bool = False,
    mask: Tensor | None = None,
    turn_ids: Tensor | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """kappa ``[B, T]`` (float32, float64 for float64 logits; detached) from teacher logits ``[B, T, V]``.

    * ``max_prob``: max_v pi_T(v) (in (1/V, 1]).
    * ``neg_entropy``: 1 - H(pi_T) / log V (0 for a uniform teacher, 1 for a one-hot one).
    * ``none``: 1 everywhere (the "no confidence" ablation).

    V is the last dim as given: slice padded vocab rows off beforehand, or neg_entropy's log V is off.
    ``turn_average`` replaces each token's kappa by the mean over the masked tokens (``mask`` > 0 and
    ``turn_ids`` >= 0) of its turn; ``turn_ids`` numbers turns within a row (-1 outside responses), and
    when it is None each row is one turn. Tokens outside any turn keep their own value. The floor
    ``minimum`` is applied last, so every returned value is >= minimum.
    """
    check_choice("confidence kind", kind, CONFIDENCE_KINDS)
    check_temperature(temperature)
    shape = teacher_logits.shape[:-1]
    if kind == "none":
        kappa = torch.ones(shape, dtype=torch.float32, device=teacher_logits.device)
    else:
        logits = teacher_logits.detach()
        logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        logp = F.log_softmax(logits / temperature, dim=-1)
        if kind == "max_prob":
            kappa = logp.max(dim=-1).values.exp()
        else:
            vocab = teacher_logits.shape[-1]
            probs = logp.exp()
            entropy = -(probs * logp.clamp(min=-1e30)).sum(dim=-1)  # 0 * -inf -> 0 for masked vocab rows
            kappa = 1.0 - entropy / math.log(vocab) if vocab > 1 else torch.ones_like(entropy)
    return finish_confidence(kappa, minimum, turn_average, mask, turn_ids)


def finish_confidence(
    kappa: Tensor, minimum: float = 0.0, turn_average: bool = False, mask: Tensor | None = None,
    turn_ids: Tensor | None = None,
) -> Tensor:
    """The per-turn part of kappa ``[B, T]`` (see `teacher_confidence`): optionally each token's value
    replaced by its turn's mean, then the floor ``minimum``. `TeacherScorer` applies it to each turn's
    per-token kappa (one row, one turn)."""
    if turn_average:
        valid = torch.ones(kappa.shape, dtype=torch.bool, device=kappa.device) if mask is None else mask > 0
        kappa = _turn_average(kappa, valid, turn_ids)
    return kappa.clamp(min=minimum)
