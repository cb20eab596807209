"""The teacher-judge prompt: all of its text lives here and is configurable from YAML (``model.judge_prompt``).

The judge sees the task, the recent history, the student's response and the environment's feedback,
never the won/done flag or a reward: the gate must stay verifier-free (docs/METHOD.md, turn gate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sage.specs import INTERVENE, SKIP, STRONG, WEAK

SYSTEM = (
    "You are an expert household agent supervising a student agent in ALFWorld, a text-based household "
    "environment. The student reads the task and the observations and answers with one action per turn. "
    "You review one turn of the student after seeing how the environment responded, and decide how much "
    "the teacher should correct the student on that turn."
)

USER = """Task: {task}

Recent history:
{history}

Current observation:
{observation}

Student's response:
{response}

Environment feedback after the student's action:
{feedback}

How much should the teacher correct the student on this turn?
{label_guide}

Answer with exactly one word: {label_list}."""

LABEL_GUIDE = {
    SKIP: "the action is reasonable progress toward the task, or an acceptable alternative; leave it alone.",
    WEAK: "the action is unhelpful or doubtful but not clearly wrong; correct it lightly.",
    STRONG: (
        'the action is clearly wrong: it failed (e.g. "Nothing happens."), repeats itself without progress, '
        "or ignores the task; correct it."
    ),
    INTERVENE: "the action is wrong, failed or repeats itself without progress; correct it.",
}


@dataclass
class JudgePrompt:
    """Templates use ``str.format`` fields: {task} {history} {observation} {response} {feedback} {action}
    {admissible} {label_guide} {label_list}. ``answer_prefix`` is appended after the chat template's
    assistant header (e.g. "Verdict:"); labels are scored right after it."""

    system: str = SYSTEM
    user: str = USER
    history_item: str = "Observation: {observation}\nAction: {action}"
    no_history: str = "(none: this is the first turn)"
    label_guide: dict[str, str] = field(default_factory=lambda: dict(LABEL_GUIDE))
    answer_prefix: str = ""
    chat_template_kwargs: dict[str, Any] | None = None  # e.g. {enable_thinking: false} for Qwen3

    def messages(
        self,
        labels: tuple[str, ...],
        task: str,
        history: list[tuple[str, str]],
        observation: str,
        response: str,
        feedback: str,
        action: str = "",
        admissible: list[str] | None = None,
    ) -> list[dict[str, str]]:
        """Chat messages (system + user) for one turn; ``history`` is (observation, action) pairs, oldest first."""
        items = [self.history_item.format(observation=o, action=a) for o, a in history]
        guide = "\n".join(f"- {lab}: {self.label_guide[lab]}" if lab in self.label_guide else f"- {lab}" for lab in labels)
        label_list = ", ".join(labels[:-1]) + f" or {labels[-1]}" if len(labels) > 1 else labels[0]
        fields = {
            "task": task,
            "history": "\n\n".join(items) if items else self.no_history,
            "observation": observation,
            "response": response,
            "feedback": feedback,
            "action": action,
            "admissible": "\n".join(admissible or []),
            "label_guide": guide,
            "label_list": label_list,
        }
        try:
            user = self.user.format_map(fields)
            system = self.system.format_map(fields)
        except KeyError as e:
            raise ValueError(f"judge prompt uses unknown field {e}; available: {sorted(fields)}") from e
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]
