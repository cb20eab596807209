"""Gate x confidence weighting and step-wide normalization of the token loss (docs/METHOD.md, "Normalization").

The step loss is ``L = sum(g * kappa * l * mask) / D`` where the sums run over the whole optimizer step
(every micro-batch, every rank) and ``D`` is

* ``opd``: ``sum(mask)``, the number of response tokens (skipped turns included), i.e. standard OPD's
  token mean;
* ``weighted``: ``max(eps, sum(g * kappa * mask))``, so the weights average to 1 over the step and the
  loss keeps OPD's scale while skipped turns still contribute nothing.

Contract with the caller (gradient accumulation must not change the loss), kept by `sage.plan.plan_steps`
and `SageModule.training_step`:

1. Before any backward of a step, compute ``step_denominator`` for every micro-batch of that step, sum
   them, and all-reduce (sum) the total across ranks.
2. Per micro-batch, divide ``sum(token_weights * l)`` by that same total (``normalized``) and backward
   the result. The per-micro-batch losses then add up to exactly the step loss, and their accumulated
   gradients to the step gradient, whatever the accumulation split. The ``eps`` clamp is applied to the
   total only.
3. DDP averages gradients over its W ranks; multiply each micro-batch loss by W (or divide the total
   denominator by W) so the averaged gradient is that of the global step loss.

If every turn of the step is skipped the numerator weights are all zero and the loss is exactly 0.0,
with a graph back to ``token_loss`` (zero gradients), even if ``token_loss`` holds inf/NaN there.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sage.specs import NORMALIZATIONS, check_choice
from sage.upcast import compute_dtype


def _check_normalize(normalize: str) -> None:
    check_choice("normalize", normalize, NORMALIZATIONS)


def token_weights(mask: Tensor, gate: Tensor, confidence: Tensor) -> Tensor:
    """g * kappa * mask, detached, exactly 0 off the mask (so NaN gates on padding cannot leak)."""
    mask = mask.detach()
    w = gate.detach() * confidence.detach() * mask
    return torch.where(mask > 0, w, torch.zeros((), dtype=w.dtype, device=w.device))


def step_denominator(mask: Tensor, gate: Tensor, confidence: Tensor, normalize: str) -> Tensor:
    """This micro-batch's share of the step denominator (detached scalar); sum it over the whole step.

    No ``eps`` clamp here: clamping per micro-batch would make the total depend on the split, so
    ``normalized`` clamps the step total instead.
    """
    _check_normalize(normalize)
    dtype = compute_dtype(gate.dtype, confidence.dtype)
    if normalize == "opd":
        return mask.detach().to(dtype).sum()
    return token_weights(mask.to(dtype), gate.to(dtype), confidence.to(dtype)).sum()


def normalized(numerator: Tensor, denominator: Tensor | float, eps: float = 1e-8) -> Tensor:
    """A micro-batch's ``sum(g * kappa * l)`` over the step's total denominator, clamped at ``eps``.

    The training step computes that numerator chunk by chunk from hidden states
    (`sage.distill.fused.chunked_token_loss`, with ``token_weights`` as its weights); positions of weight 0
    are dropped there before any math, so inf/NaN losses on them reach neither value nor gradient."""
    denom = torch.as_tensor(denominator, dtype=numerator.dtype, device=numerator.device).detach()
    return numerator / denom.clamp(min=eps)
