"""The teacher's work on a rollout, between the environment and the batches: the gate g_t on every turn
(`sage.distill.gate`), then (distillation) the teacher's one pass over the student's tokens of the turns it kept:
log pi_T and kappa per token, and the hidden states the loss recomputes the teacher's logits from.

Only turns with g_t > 0 are scored: a skipped turn's weight is 0 whatever kappa is (it adds only its
token count to the `opd` denominator), so scoring it would be wasted teacher time. In transcript mode an
episode with any kept turn is scored as one sequence (one forward either way).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from sage.distill.gate import Gate
from sage.distill.teacher import TeacherScorer
from sage.rollout.records import Episode


@dataclass
class Annotator:
    gate: Gate
    scorer: TeacherScorer | None  # None: nothing to score (the SFT objective)

    @torch.no_grad()
    def __call__(self, episodes: list[Episode], transcript: bool) -> dict[str, float]:
        """Annotate the episodes in place; returns the seconds each part took."""
        t0 = time.perf_counter()
        self.gate.judge(episodes)
        t1 = time.perf_counter()
        if self.scorer is not None:
            if transcript:
                self.scorer.score_episodes([ep for ep in episodes if any(t.gate > 0 for t in ep.turns)])
            else:
                self.scorer.score_turns([t for ep in episodes for t in ep.turns if t.gate > 0])
        return {"judge_seconds": t1 - t0, "score_seconds": time.perf_counter() - t1}
