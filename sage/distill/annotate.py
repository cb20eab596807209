"""The teacher's work on a rollout, between the environment and the batches: the gate g_t on every turn
(`sage.distill.gate`), then (distillation) the teacher's one pass over the student's tokens of the turns it kept:
log pi_T and kappa per token, and the hidden states the loss recomputes the teacher's logits from.

Only turns with g_t > 0 are scored: a skipped turn's weight is 0 whatever kappa is (it adds only its
token count to the `opd` denominator), so scoring it would be wasted teacher time: a row
(`sage.scoring.episode_rows`) is scored when it holds a kept turn. In transcript mode an episode is one row,
scored whole when any of its turns is kept (one forward either way).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from sage.distill.gate import Gate
from sage.distill.teacher import TeacherScorer
from sage.rollout.context import Context, context_for
from sage.rollout.records import Episode
from sage.scoring import TeacherHidden, episode_rows


@dataclass
class Annotation:
    teacher_hidden: TeacherHidden  # (episode, turn) -> [n_response, H]; empty when the loss reads none
    seconds: dict[str, float]  # judge_seconds, score_seconds


@dataclass
class Annotator:
    gate: Gate
    scorer: TeacherScorer | None  # None: nothing to score (the SFT objective)

    @torch.no_grad()
    def __call__(self, episodes: list[Episode], context: Context | str | bool) -> Annotation:
        """Write g_t (and kappa, log pi_T) into the turns, which are logged with their episode; return the
        teacher's hidden states, which only the epoch's plan holds. ``context``: how the episodes were
        played (`sage.rollout.context`, or its ``context_mode``; a bool: transcript or not)."""
        t0 = time.perf_counter()
        self.gate.judge(episodes)
        t1 = time.perf_counter()
        hidden: TeacherHidden = {}
        if self.scorer is not None:
            rows = [r for r in episode_rows(episodes, context_for(context))
                    if any(episodes[r.episode].turns[k].gate > 0 for k in r.turns)]
            hidden = self.scorer.score([ep.turns for ep in episodes], rows)
        return Annotation(hidden, {"judge_seconds": t1 - t0, "score_seconds": time.perf_counter() - t1})
