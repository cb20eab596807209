"""The fp32 upcast rule, in one place: losses, log-probs, confidences and softmaxes are computed in at
least float32 (bf16/fp16 inputs are upcast: their rounding would swamp the small differences a KL is
made of), and float64 stays float64 (so exactness tests can run the same code in float64)."""

from __future__ import annotations

import torch
from torch import Tensor


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype to compute in for inputs of these dtypes: their promotion, and at least float32."""
    out = torch.float32
    for d in dtypes:
        out = torch.promote_types(out, d)
    return out


def upcast(x: Tensor) -> Tensor:
    """``x`` in `compute_dtype` (no copy when it already is)."""
    return x.to(compute_dtype(x.dtype))
