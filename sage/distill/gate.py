"""The turn gate g_t (docs/METHOD.md, Turn gate): which student turns get distilled, and how strongly.

One class per ``model.gate.mode``, registered by name in `GATES`; each fills ``turn.gate_label``,
``turn.gate`` and ``turn.gate_probs`` for every turn. A new gate is a new class and one line in `GATES`
(and its name in `sage.specs.GateMode`). The judge labels and their gates live in `sage.specs.GATE_LABELS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sage.distill.judge import TeacherJudge
from sage.distill.judge_prompt import JudgePrompt
from sage.rollout.records import Episode, Turn, is_repeat
from sage.specs import INTERVENE, SKIP, GateSpec

# Environment feedback that says an action failed (ALFWorld's reply to an impossible command).
FAIL_MARKERS = ("Nothing happens.",)


class Gate(Protocol):
    @classmethod
    def from_spec(cls, spec: GateSpec, prompt: JudgePrompt | None, teacher, tokenizer) -> Gate: ...

    def judge(self, episodes: Sequence[Episode]) -> None: ...


class AlwaysGate:
    """Standard OPD: every turn, label ``ALWAYS``, gate 1."""

    @classmethod
    def from_spec(cls, spec: GateSpec, prompt: JudgePrompt | None, teacher, tokenizer) -> AlwaysGate:
        return cls()

    def judge(self, episodes: Sequence[Episode]) -> None:
        for t in (t for e in episodes for t in e.turns):
            t.gate_label, t.gate, t.gate_probs = "ALWAYS", 1.0, {"ALWAYS": 1.0}


class FeedbackRule:
    """A cheap non-teacher baseline: ``INTERVENE`` (gate 1) when the feedback reports a failure, the action
    repeats the previous one (`sage.rollout.records.is_repeat`, as the repeat rates count it), or the
    response's format is invalid; otherwise ``SKIP`` (gate 0). The names of the two-level judge, so their
    logs compare directly."""

    @classmethod
    def from_spec(cls, spec: GateSpec, prompt: JudgePrompt | None, teacher, tokenizer) -> FeedbackRule:
        return cls()

    def judge(self, episodes: Sequence[Episode]) -> None:
        for e in episodes:
            for k, t in enumerate(e.turns):
                bad = self.intervenes(t, e.turns[k - 1] if k else None)
                t.gate_label, t.gate = (INTERVENE, 1.0) if bad else (SKIP, 0.0)
                t.gate_probs = {SKIP: float(not bad), INTERVENE: float(bad)}

    @staticmethod
    def intervenes(turn: Turn, previous: Turn | None) -> bool:
        failed = any(m in turn.feedback for m in FAIL_MARKERS)
        return failed or is_repeat(turn, previous) or not turn.valid_format


GATES: dict[str, type[Gate]] = {"teacher_judge": TeacherJudge, "always": AlwaysGate, "feedback_rule": FeedbackRule}


def make_gate(spec: GateSpec, prompt: JudgePrompt | None, teacher, tokenizer) -> Gate:
    """The gate ``spec.mode`` names (the mode was checked when the spec was built)."""
    return GATES[spec.mode].from_spec(spec, prompt, teacher, tokenizer)
