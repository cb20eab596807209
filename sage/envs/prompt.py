"""Prompt text, chat-message builder and action parser for ALFWorld agents.

Every word the policy (or teacher) reads comes from PromptTemplate, a plain dataclass, so YAML configs
can change it. Placeholders every template may use: {task} {history} {step} {step_number}
{observation} {admissible} {answer_format}.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass
class PromptTemplate:
    """All prompt text. Window mode (verl-agent style): one user message per turn holding the task,
    the last N observation/action pairs, the current observation and the admissible actions.
    Transcript mode: one growing chat, a first message then one feedback message per turn."""

    system: str = (
        "You are an expert agent acting in a text-based household environment (ALFWorld). "
        "You reach the goal by choosing one admissible action per turn."
    )
    window_user: str = (
        "Your task is to: {task}\n"
        "{history}"
        "You are now at step {step_number} and your current observation is:\n{observation}\n\n"
        "Your admissible actions of the current situation are:\n{admissible}\n\n"
        "{answer_format}"
    )
    history_header: str = (
        "Prior to this step, you have already taken {step} step(s). Below are the most recent {count} "
        "observations and the actions you took:\n"
    )
    history_item: str = "[Observation {index}: {observation}]\n[Action {index}: {action}]\n"
    history_footer: str = "\n"
    admissible_item: str = "- {action}"
    admissible_sep: str = "\n"
    hidden_actions: list[str] = field(default_factory=lambda: ["help"])  # never offered to the model
    drop_banner: bool = True  # drop the "-= Welcome to TextWorld, ALFRED! =-" line of the first observation
    answer_format: str = (
        "Now it's your turn to take an action. First reason step by step about the current situation "
        "inside <think> </think> tags. Then choose exactly one admissible action and write it inside "
        "<action> </action> tags, for example: <think>...</think><action>go to desk 1</action>"
    )
    transcript_first: str = (
        "Your task is to: {task}\n\nObservation:\n{observation}\n\n"
        "Admissible actions:\n{admissible}\n\n{answer_format}"
    )
    transcript_feedback: str = (
        "Observation:\n{observation}\n\nAdmissible actions:\n{admissible}\n\n"
        "Answer with <think>...</think><action>...</action>."
    )
    expert_answer: str = "<think>The next step of my plan is to {action}.</think><action>{action}</action>"
    """The answer scripted experts give in this prompt's answer format ({action} is the command): what SFT
    and teacher data train on, so it must be the format `answer_format` asks for."""


_BANNER_RE = re.compile(r"^\s*-=.*?=-\s*\n+")


class PromptBuilder:
    """Chat messages ({"role", "content"} dicts) from the template; an empty system text sends none."""

    def __init__(self, template: PromptTemplate | None = None):
        self.template = template or PromptTemplate()

    def window_messages(
        self,
        task: str,
        history: list[tuple[str, str]],
        observation: str,
        admissible: list[str],
        step: int | None = None,
    ) -> list[dict]:
        """`history` holds the (observation, action) pairs to show, oldest first (the caller picks how many:
        `RolloutSpec.window_history`); `step` (steps already taken) defaults to len(history)."""
        t = self.template
        step = len(history) if step is None else step
        shown = list(history)
        text = ""
        if shown:
            first = step - len(shown) + 1
            items = "".join(
                t.history_item.format(index=first + k, observation=self._obs(o).strip(), action=a)
                for k, (o, a) in enumerate(shown)
            )
            text = t.history_header.format(step=step, count=len(shown)) + items + t.history_footer
        content = self._fill(t.window_user, task, observation, admissible, history=text, step=step)
        return self._with_system({"role": "user", "content": content})

    def transcript_first(self, task: str, observation: str, admissible: list[str]) -> list[dict]:
        content = self._fill(self.template.transcript_first, task, observation, admissible)
        return self._with_system({"role": "user", "content": content})

    def transcript_feedback(self, observation: str, admissible: list[str]) -> dict:
        return {
            "role": "user",
            "content": self._fill(self.template.transcript_feedback, "", observation, admissible),
        }

    def format_admissible(self, admissible: list[str]) -> str:
        t = self.template
        hidden = set(t.hidden_actions)
        return t.admissible_sep.join(
            t.admissible_item.format(action=a) for a in admissible if a not in hidden
        )

    def _obs(self, observation: str) -> str:
        return _BANNER_RE.sub("", observation, count=1) if self.template.drop_banner else observation

    def _fill(
        self,
        template: str,
        task: str,
        observation: str,
        admissible: list[str],
        history: str = "",
        step: int = 0,
    ) -> str:
        return template.format(
            task=task,
            history=history,
            step=step,
            step_number=step + 1,
            observation=self._obs(observation).strip(),
            admissible=self.format_admissible(admissible),
            answer_format=self.template.answer_format,
        )

    def _with_system(self, user: dict) -> list[dict]:
        system = self.template.system
        return ([{"role": "system", "content": system}] if system else []) + [user]


@dataclass
class ParsedAction:
    action: str  # normalized command; "" when the format is invalid (the engine answers "Nothing happens.")
    valid: bool
    think: str | None


_ACTION_RE = re.compile(r"<\s*action\s*>(.*?)<\s*/\s*action\s*>", re.IGNORECASE | re.DOTALL)
_THINK_RE = re.compile(r"<\s*think\s*>(.*?)<\s*/\s*think\s*>", re.IGNORECASE | re.DOTALL)


def normalize_command(text: str) -> str:
    """ALFWorld matches commands exactly and they are lowercase with single spaces."""
    return " ".join(text.split()).lower()


def parse_action(text: str, require_think: bool = False) -> ParsedAction:
    """The last <action>...</action> block (tags matched case- and space-insensitively), normalized.

    Missing/unclosed tags or an empty action give valid=False and action "" -- a command the engine
    never admits, so an invalid answer costs a step with "Nothing happens." and never acts by accident.
    require_think=True also demands a closed <think> block (verl-agent's stricter rule).
    """
    text = text or ""
    thinks = _THINK_RE.findall(text)
    think = thinks[-1].strip() if thinks else None
    actions = _ACTION_RE.findall(text)
    action = normalize_command(actions[-1]) if actions else ""
    valid = bool(action) and (think is not None or not require_think)
    return ParsedAction(action if valid else "", valid, think)
