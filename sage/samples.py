"""From annotated episodes to training samples: the one place that reads a turn's training fields.

A sample is one row of `sage.scoring.episode_rows` with its per-token training fields: in window mode one
turn (the exact context the policy saw, then its response), in transcript mode one whole episode (its
append-only chat, the student's tokens marked). Per-token lists align with ``input_ids``; position j is a
response token when ``loss_mask[j] == 1`` (predicted from position j-1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sage.rollout.context import Context, context_for
from sage.rollout.records import Episode, Turn
from sage.scoring import EpisodeRow, TeacherHidden, episode_rows

__all__ = ["Sample", "TeacherHidden", "episode_samples", "transcript_samples", "window_samples"]


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


def _hidden_rows(parts: Sequence[tuple[int, torch.Tensor | None]], n_rows: int) -> torch.Tensor | None:
    """The turns' teacher hidden states (``parts``: per turn, its token count and states) stacked in token
    order; zero rows for turns the teacher did not score (gate 0: their weight is 0, the loss drops them).
    None when no turn was scored (the loss kind reads no hidden states, or SFT)."""
    scored = [h for _, h in parts if h is not None]
    if not scored:
        return None
    like = scored[0]
    stack = [h if h is not None else like.new_zeros((n, like.shape[1])) for n, h in parts]
    out = torch.cat(stack) if len(stack) > 1 else stack[0]
    if out.shape[0] != n_rows:
        raise ValueError(f"teacher hidden states for {out.shape[0]} tokens, but the sample has {n_rows} response tokens")
    return out


def _sample(row: EpisodeRow, turns: Sequence[Turn], hidden: TeacherHidden) -> Sample:
    n = len(row.ids)
    mask, gate, conf, tlp = [0] * n, [0.0] * n, [1.0] * n, [0.0] * n
    parts = []
    for k, first, end in row.spans():
        t = turns[k]
        t_conf, t_tlp = _turn_fields(t)
        g = float(t.gate) * t.weight
        for j, p in enumerate(row.positions[first:end]):
            mask[p], gate[p], conf[p], tlp[p] = 1, g, t_conf[j], t_tlp[j]
        parts.append((end - first, hidden.get((row.episode, k))))
    return Sample(row.ids, mask, gate, conf, tlp, _hidden_rows(parts, len(row.positions)))


def episode_samples(episodes: Sequence[Episode], context: Context, hidden: TeacherHidden | None = None) -> list[Sample]:
    """One sample per row of the episodes as their context lays them out (a turn, or an episode)."""
    hidden = hidden or {}
    return [_sample(row, episodes[row.episode].turns, hidden) for row in episode_rows(episodes, context)]


def window_samples(episodes: Sequence[Episode], hidden: TeacherHidden | None = None) -> list[Sample]:
    """One sample per turn: the exact context the policy saw followed by its response."""
    return episode_samples(episodes, context_for("window"), hidden)


def transcript_samples(episodes: Sequence[Episode], hidden: TeacherHidden | None = None) -> list[Sample]:
    """One sample per episode: the whole append-only chat, the student's tokens marked."""
    return episode_samples(episodes, context_for("transcript"), hidden)
