"""Offline judge labels: what a turn deserved, from information the student and the judge never see.

The rule (also in docs/METHOD.md, "Offline judge labels"), applied in this order:

1. STRONG: the answer has no parsable action, the environment answered "Nothing happens.", the action
   repeats the previous turn's (`sage.rollout.records.is_repeat`: a repeated command gets the same text
   again or is refused, so it brings no new information), or the expert's subgoal index fell (e.g. the
   task object was put down somewhere else).
2. SKIP: the action is the hand-coded expert's next action from that state, or the expert's subgoal
   index rose (progress by another route).
3. WEAK: anything else: an admissible action that neither progresses nor fails (a detour, an extra look).

The expert (alfworld's hand-coded agent) searches without peeking at hidden objects; its subgoal index
(find, take, [heat|cool|clean|find lamp], find target, put, ...) is computed from the true game facts. The
PDDL planner's distance to the goal would be a finer progress signal, but asking it costs 0.7-1.0 s per
step on this CPU (vs 0.03-0.1 s for the step itself), so the subgoal index stands in for it.
"""

from __future__ import annotations

from collections.abc import Sequence

from sage.distill.gate import FAIL_MARKERS
from sage.rollout.records import Episode, Turn, is_repeat
from sage.specs import INTERVENE, SKIP, STRONG, THREE_LEVEL, WEAK

LABEL_RULE = __doc__


def offline_label(turn: Turn, previous: Turn | None) -> str:
    """SKIP / WEAK / STRONG for one turn (see the module docstring)."""
    before, after = turn.subgoal_before, turn.subgoal_after
    regress = before is not None and after is not None and after < before
    failed = any(m in turn.feedback for m in FAIL_MARKERS)
    if not turn.valid_format or failed or is_repeat(turn, previous) or regress:
        return STRONG
    progress = before is not None and after is not None and after > before
    if progress or (turn.expert_action is not None and turn.action == turn.expert_action):
        return SKIP
    return WEAK


def offline_labels(episode: Episode, labels: Sequence[str] = THREE_LEVEL) -> list[str]:
    """Each turn's offline label in the judge's label set (two-level: WEAK and STRONG become INTERVENE)."""
    turns: Sequence[Turn] = episode.turns
    out = [offline_label(t, turns[k - 1] if k else None) for k, t in enumerate(turns)]
    return out if WEAK in labels else [lab if lab == SKIP else INTERVENE for lab in out]
