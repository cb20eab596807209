"""Rows and the one scoring loop: every forward that reads a model at chosen tokens of given sequences.

A `Row` is a sequence and the positions of the tokens scored in it (position p is predicted from p - 1).
Episodes become rows in one place, `episode_rows`, which asks the context the episodes were played in
(`sage.rollout.context`) how one episode becomes rows: a turn per row in window mode, an episode per row
in transcript mode. The samples, the teacher's scoring, the evaluation KL and the judge all read rows.

`scored_batches` is the loop they share: rows batched under a token budget, right-padded, no KV cache,
and per model the final hidden states at the positions that predict the scored tokens only (an LM head
over every position would cost far more memory than the decoder at a 150k vocabulary). What is done with
those hidden states (log-probs and confidence, a KL, label probabilities) is the caller's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from sage.forward import budget_batches, model_device, pad_right, position_mask, selected_hidden
from sage.rollout.records import Episode

# The teacher's final hidden states of each scored turn, ``[n_response, H]``, keyed by (episode, turn)
# position in the epoch's episode list: the teacher's scoring returns them, the samples take them.
TeacherHidden = dict[tuple[int, int], Tensor]


@dataclass(frozen=True)
class Row:
    """A sequence to forward and the tokens of it that are scored.

    ``positions`` increase; each is >= 1 and at most ``len(ids)``: ``len(ids)`` scores the token that
    would follow the row (the judge's verdict), whose id the row does not hold."""

    ids: list[int]
    positions: list[int]

    def __post_init__(self) -> None:
        if self.positions and not 1 <= self.positions[0] <= self.positions[-1] <= len(self.ids):
            raise ValueError(f"scored positions {self.positions[0]}..{self.positions[-1]} outside [1, {len(self.ids)}]")


@dataclass(frozen=True)
class EpisodeRow(Row):
    """A row of an episode: which episode (its index in the list given), the turns whose tokens it holds
    (those with no scored token too) and, per position, the turn that position's token belongs to."""

    episode: int
    turns: tuple[int, ...]
    owners: list[int]

    def spans(self) -> list[tuple[int, int, int]]:
        """(turn, first, end): ``positions[first:end]`` are turn's tokens, in order."""
        out: list[tuple[int, int, int]] = []
        for n, k in enumerate(self.owners):
            if out and out[-1][0] == k:
                out[-1] = (k, out[-1][1], n + 1)
            else:
                out.append((k, n, n + 1))
        return out


class RowLayout(Protocol):
    """How one episode becomes rows: the context it was played in (`sage.rollout.context`) knows."""

    def rows(self, episode: Episode, index: int) -> list[EpisodeRow]: ...


def episode_rows(episodes: Sequence[Episode], layout: RowLayout) -> list[EpisodeRow]:
    """Every row of the episodes, in episode order (rows with no scored token included)."""
    return [row for e, ep in enumerate(episodes) for row in layout.rows(ep, e)]


@dataclass(frozen=True)
class ScoredBatch:
    rows: list[int]  # indices into the rows given
    hidden: list[Tensor]  # per model, [N, H]: the state predicting each scored token, rows in order
    targets: Tensor  # [N] long, on the host: the scored tokens (-1 for one past a row's end)
    counts: list[int]  # scored tokens per row


def scored_batches(models: Sequence, rows: Sequence[Row], max_tokens: int,
                   max_rows: int | None = None) -> Iterator[ScoredBatch]:
    """The rows that score some token, batched longest first under ``max_tokens`` (rows x longest) and
    ``max_rows``, each batch forwarded through every model in turn (on its own device). Gradients flow
    when the caller has them on."""
    scored = [i for i, r in enumerate(rows) if r.positions]
    for group in budget_batches([len(rows[i].ids) for i in scored], max_tokens, max_rows):
        batch = [scored[g] for g in group]
        ids, attn = pad_right([rows[i].ids for i in batch])
        select = position_mask(ids, [[p - 1 for p in rows[i].positions] for i in batch])
        hidden = []
        for model in models:
            device = model_device(model)
            hidden.append(selected_hidden(model, ids.to(device), attn.to(device), select))
        targets = torch.tensor([rows[i].ids[p] if p < len(rows[i].ids) else -1
                                for i in batch for p in rows[i].positions], dtype=torch.long)
        yield ScoredBatch(batch, hidden, targets, [len(rows[i].positions) for i in batch])
