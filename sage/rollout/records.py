"""Turn and Episode records: exactly what the policy saw and did, so training can replay it.

Token ids are stored as plain lists (cheap to pickle across processes and to write as JSONL);
the DataModule turns them into padded tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sage.envs.prompt import normalize_command


@dataclass
class Turn:
    """One student turn: context -> sampled response -> environment feedback."""

    game_id: str
    split: str
    task_type: str
    index: int  # 0-based position of the turn inside its episode
    # Exactly the tokens the policy conditioned on (no padding). Empty in transcript mode, where the
    # context is Episode.sequence_ids[:offset] (storing every prefix would cost O(turns^2) memory).
    context_ids: list[int]
    response_ids: list[int]  # sampled tokens, including the stop tokens the model emitted
    logprobs: list[float]  # sampling log-probs of response_ids under the policy (after temperature/top-p)
    response_text: str
    action: str  # the command sent to the environment
    valid_format: bool  # True when <action>...</action> could be parsed
    observation: str  # the observation the student acted on
    admissible: list[str]  # admissible commands at that observation
    feedback: str  # the environment's observation after the action (o_{t+1})
    done: bool
    won: bool
    offset: int = -1  # transcript mode: position of response_ids[0] inside Episode.sequence_ids
    # Privileged, for offline labels only (set when the environment tracks alfworld's hand-coded expert;
    # never shown to the policy or the judge): the expert's next action at `observation`, and the index of
    # the expert's current subgoal before and after this turn's action.
    expert_action: str | None = None
    subgoal_before: int | None = None
    subgoal_after: int | None = None
    # Filled in after the rollout by the judge and teacher scoring.
    gate_label: str | None = None  # SKIP / WEAK / STRONG / INTERVENE / ALWAYS ...
    gate: float = 1.0  # g_t
    gate_probs: dict[str, float] | None = None
    confidence: list[float] | None = None  # kappa_{t,k}, one per response token
    teacher_logprobs: list[float] | None = None  # log pi_T(y_{t,k} | h_{t,k})
    # A fixed factor on this turn's token weights, set by its data source and left alone by the gate (the
    # teacher recipe's judge examples: data.dagger.judge_weight). Its tokens weigh gate x weight x kappa.
    weight: float = 1.0
    # Evaluation only (`sage.distill.eval_kl`, set in validation_step when there is a teacher): the sum over
    # this turn's response tokens of KL(student || teacher), and how many tokens it sums. None: not scored.
    eval_kl: float | None = None
    eval_kl_tokens: int = 0


@dataclass
class Episode:
    """A whole game played by the student; `turns` are in order."""

    game_id: str
    split: str
    task_type: str
    task: str  # the goal text, e.g. "put a clean mug in coffeemachine."
    turns: list[Turn] = field(default_factory=list)
    won: bool = False
    error: str | None = None  # set when the environment worker died; the episode is then excluded
    truncated: bool = False  # the context-length policy kicked in (see sage.rollout.context)
    # transcript mode: the whole episode as one sequence; the student's own tokens are marked.
    sequence_ids: list[int] | None = None
    student_mask: list[int] | None = None  # 1 on tokens the student generated
    turn_index: list[int] | None = None  # per token: index of its turn (-1 outside responses)

    @property
    def length(self) -> int:
        return len(self.turns)

    @property
    def success(self) -> bool:
        return self.won and self.error is None


def admissible_flags(ep: Episode) -> list[int]:
    """Per turn, 1 when the action was one of the environment's admissible commands at that observation."""
    return [int(t.action in t.admissible) for t in ep.turns]


def is_repeat(turn: Turn, previous: Turn | None) -> bool:
    """Whether `turn` sends the same command as `previous`, the turn before it in its episode (compared as
    normalized commands): the one definition of a repeat, asked by the repeat rates (`repeat_flags`), the
    ``feedback_rule`` gate and the offline judge labels. A game's first turn (``previous`` None) and an
    unparsed answer (action "") never repeat. The feedback is not compared: in ALFWorld a repeated command
    either changes nothing and gets the same text again (look, examine) or is refused ("Nothing happens."),
    so the command alone says it is a loop."""
    command = normalize_command(turn.action)
    return previous is not None and bool(command) and command == normalize_command(previous.action)


def repeat_flags(ep: Episode) -> list[int]:
    """Per turn, 1 when the turn repeats the episode's previous one (`is_repeat`: a loop); turn 0 never does."""
    return [int(is_repeat(t, ep.turns[k - 1] if k else None)) for k, t in enumerate(ep.turns)]
