"""From annotated episodes to training samples: the one place that reads a turn's training fields.

A sample is one training sequence: in window mode one turn (the exact context the policy saw, then its
response), in transcript mode one whole episode (its append-only chat, the student's tokens marked).
Per-token lists align with ``input_ids``; position j is a response token when ``loss_mask[j] == 1``
(predicted from position j-1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sage.rollout.records import Episode, Turn

# The teacher's final hidden states of each scored turn, ``[n_response, H]``, keyed by (episode, turn)
# position in the epoch's episode list: `sage.distill.annotate.Annotator` returns them, the samples take them.
TeacherHidden = dict[tuple[int, int], torch.Tensor]


@dataclass
class Sample:
    input_ids: list[int]
    loss_mask: list[int]
    gate: list[float]
    confidence: list[float]
    teacher_logprobs: list[float]
    teacher_hidden: torch.Tensor | None = None  # [n_response, H]: one row per loss_mask position, in order

    @property
    def n_response(self) -> int:
        return sum(self.loss_mask)

    @property
    def trained(self) -> bool:
        """Some response token has a nonzero gate (else the sample is never forwarded)."""
        return any(g > 0 and m for g, m in zip(self.gate, self.loss_mask, strict=True))


def _turn_fields(turn: Turn) -> tuple[list[float], list[float]]:
    n = len(turn.response_ids)
    conf = list(turn.confidence) if turn.confidence is not None else [1.0] * n
    tlp = list(turn.teacher_logprobs) if turn.teacher_logprobs is not None else [0.0] * n
    return conf, tlp


def _hidden_rows(turns: Sequence[Turn], hidden: Sequence[torch.Tensor | None], n_rows: int) -> torch.Tensor | None:
    """The turns' teacher hidden states stacked in token order; zero rows for turns the teacher did not
    score (gate 0: their weight is 0, the loss drops them). None when no turn was scored (the loss kind
    reads no hidden states, or SFT)."""
    scored = [h for h in hidden if h is not None]
    if not scored:
        return None
    like = scored[0]
    parts = [h if h is not None else like.new_zeros((len(t.response_ids), like.shape[1]))
             for t, h in zip(turns, hidden, strict=True)]
    out = torch.cat(parts) if len(parts) > 1 else parts[0]
    if out.shape[0] != n_rows:
        raise ValueError(f"teacher hidden states for {out.shape[0]} tokens, but the sample has {n_rows} response tokens")
    return out


def window_samples(episodes: Sequence[Episode], hidden: TeacherHidden | None = None) -> list[Sample]:
    """One sample per turn: the exact context the policy saw followed by its response."""
    hidden = hidden or {}
    out = []
    for e, ep in enumerate(episodes):
        for k, t in enumerate(ep.turns):
            n, c = len(t.response_ids), len(t.context_ids)
            conf, tlp = _turn_fields(t)
            out.append(
                Sample(
                    input_ids=list(t.context_ids) + list(t.response_ids),
                    loss_mask=[0] * c + [1] * n,
                    gate=[0.0] * c + [float(t.gate) * t.weight] * n,
                    confidence=[1.0] * c + conf,
                    teacher_logprobs=[0.0] * c + tlp,
                    teacher_hidden=_hidden_rows([t], [hidden.get((e, k))], n),
                )
            )
    return out


def transcript_samples(episodes: Sequence[Episode], hidden: TeacherHidden | None = None) -> list[Sample]:
    """One sample per episode: the whole append-only chat, the student's tokens marked."""
    hidden = hidden or {}
    out = []
    for e, ep in enumerate(episodes):
        if ep.sequence_ids is None:
            raise ValueError(f"episode {ep.game_id} has no sequence_ids: it was not rolled out in transcript mode")
        n = len(ep.sequence_ids)
        gate, conf, tlp = [0.0] * n, [1.0] * n, [0.0] * n
        for t in ep.turns:
            c, lp = _turn_fields(t)
            for k in range(len(t.response_ids)):
                gate[t.offset + k] = float(t.gate) * t.weight
                conf[t.offset + k] = c[k]
                tlp[t.offset + k] = lp[k]
        order = sorted((k for k, t in enumerate(ep.turns) if t.response_ids), key=lambda k: ep.turns[k].offset)
        rows = _hidden_rows([ep.turns[k] for k in order], [hidden.get((e, k)) for k in order], sum(ep.student_mask))
        out.append(Sample(list(ep.sequence_ids), list(ep.student_mask), gate, conf, tlp, rows))
    return out
