"""Distillation objective: token divergences, teacher confidence, gating and step-wide normalization
(docs/METHOD.md); the typed settings live in `sage.specs`."""

from sage.distill.confidence import teacher_confidence
from sage.distill.divergence import target_logprobs, token_divergence
from sage.distill.fused import chunked_token_loss, head_logits, teacher_token_stats
from sage.distill.objective import normalized, step_denominator, token_weights

__all__ = [
    "chunked_token_loss",
    "head_logits",
    "normalized",
    "step_denominator",
    "target_logprobs",
    "teacher_confidence",
    "teacher_token_stats",
    "token_divergence",
    "token_weights",
]
