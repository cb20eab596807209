"""Typed configs for the turn gate and teacher confidence (`gate:` and `confidence:` in YAML)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GATE_MODES = ("teacher_judge", "always", "feedback_rule")
# Judge labels usable from a config, and their gate g_t (the judge maps a label to its weight by name).
GATE_LABELS = {"SKIP": "0", "WEAK": "weak_weight", "STRONG": "1", "INTERVENE": "1"}


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
        allowed = ", ".join(f"{k} (gate {v})" for k, v in GATE_LABELS.items())
        unknown = [x for x in self.labels if x not in GATE_LABELS]
        if unknown or len(set(self.labels)) != len(self.labels) or len(self.labels) < 2:
            raise ValueError(
                f"gate.labels={list(self.labels)}: need at least two distinct labels from {allowed}"
                + (f"; unknown: {unknown}" if unknown else "")
            )


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
