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
from sage.samples import TeacherHidden


@dataclass
class Annotation:
    teacher_hidden: TeacherHidden  # (episode, turn) -> [n_response, H]; empty when the loss reads none
    seconds: dict[str, float]  # judge_seconds, score_seconds


@dataclass
class Annotator:
    gate: Gate
    scorer: TeacherScorer | None  # None: nothing to score (the SFT objective)

    @torch.no_grad()
    def __call__(self, episodes: list[Episode], transcript: bool) -> Annotation:
        """Write g_t (and kappa, log pi_T) into the turns, which are logged with their episode; return the
        teacher's hidden states, which only the epoch's plan holds."""
        t0 = time.perf_counter()
        self.gate.judge(episodes)
        t1 = time.perf_counter()
        hidden: TeacherHidden = {}
        if self.scorer is not None:
            if transcript:
                kept = [e for e, ep in enumerate(episodes) if any(t.gate > 0 for t in ep.turns)]
                per_episode = self.scorer.score_episodes([episodes[e] for e in kept])
                pairs = [((e, k), h) for e, turns in zip(kept, per_episode, strict=True) for k, h in enumerate(turns)]
            else:
                kept = [(e, k) for e, ep in enumerate(episodes) for k, t in enumerate(ep.turns) if t.gate > 0]
                pairs = list(zip(kept, self.scorer.score_turns([episodes[e].turns[k] for e, k in kept]), strict=True))
            hidden = {key: h for key, h in pairs if h is not None}
        return Annotation(hidden, {"judge_seconds": t1 - t0, "score_seconds": time.perf_counter() - t1})
