"""Distillation objective: token divergences, teacher confidence, gating and step-wide normalization."""

from sage.distill.confidence import CONFIDENCE_KINDS, teacher_confidence
from sage.distill.divergence import DIVERGENCE_KINDS, sampled_log_ratio, target_logprobs, token_divergence
from sage.distill.objective import NORMALIZE_KINDS, LossSpec, step_denominator, weighted_loss

__all__ = [
    "CONFIDENCE_KINDS",
    "DIVERGENCE_KINDS",
    "NORMALIZE_KINDS",
    "LossSpec",
    "sampled_log_ratio",
    "step_denominator",
    "target_logprobs",
    "teacher_confidence",
    "token_divergence",
    "weighted_loss",
]
