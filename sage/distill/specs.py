"""Typed configs for the turn gate and teacher confidence (`gate:` and `confidence:` in YAML)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GATE_MODES = ("teacher_judge", "always", "feedback_rule")


@dataclass
class GateSpec:
    """Turn gate g_t. `labels` picks the 3-level (SKIP/WEAK/STRONG) or 2-level (SKIP/INTERVENE) judge."""

    mode: Literal["teacher_judge", "always", "feedback_rule"] = "teacher_judge"
    labels: tuple[str, ...] = ("SKIP", "WEAK", "STRONG")
    weak_weight: float = 0.5
    history_len: int = 2
    max_batch: int = 16

    def __post_init__(self) -> None:
        if self.mode not in GATE_MODES:
            raise ValueError(f"gate.mode={self.mode!r}; allowed: {', '.join(GATE_MODES)}")
        if not 0.0 <= self.weak_weight <= 1.0:
            raise ValueError(f"gate.weak_weight={self.weak_weight} must be in [0, 1]")
        self.labels = tuple(self.labels)


@dataclass
class ConfidenceSpec:
    """Teacher confidence kappa per token (detached)."""

    kind: Literal["max_prob", "neg_entropy", "none"] = "max_prob"
    min: float = 0.0
    turn_average: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("max_prob", "neg_entropy", "none"):
            raise ValueError(f"confidence.kind={self.kind!r}; allowed: max_prob, neg_entropy, none")
        if not 0.0 <= self.min <= 1.0:
            raise ValueError(f"confidence.min={self.min} must be in [0, 1]")
