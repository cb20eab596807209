"""A teacher that scores rows: the one interface between the teacher and everything that asks it about the
student's tokens (`sage.distill.teacher.TeacherScorer`), and its in-process implementation.

Per scored token of a `sage.scoring.Row` a teacher gives log pi_T(y) at its temperature, the raw
confidence kappa (`sage.distill.confidence`, before the floor and the turn average) and, when asked to
keep them, its final hidden states: the training loss recomputes the teacher's fp32 logits from those
(`sage.distill.fused`), so the teacher decoder runs once per trained token, here. Another implementation
(a teacher served elsewhere, an inference engine) plugs in by giving the same `RowScores`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from sage.distill.fused import teacher_token_stats
from sage.forward import output_head
from sage.progress import Phase
from sage.scoring import Row, scored_batches
from sage.specs import CONFIDENCE_KINDS, check_choice, check_temperature


@dataclass(frozen=True)
class RowScores:
    """One row's scores, one entry per scored position, in order."""

    logprobs: list[float]
    kappa: list[float]
    hidden: Tensor | None  # [n, H] on the host; None when not kept


class RowTeacher(Protocol):
    def score_rows(self, rows: Sequence[Row]) -> list[RowScores]:
        """Scores of every row, in order (empty for a row with no scored position)."""
        ...


class LocalTeacher:
    """The teacher model in this process: rows batched under ``max_batch_tokens`` through
    `sage.scoring.scored_batches`, the LM head in float32 on the scored positions only, chunk by chunk.

    ``vocab_rows``: logit columns shared with the student (see `sage.models.shared_vocab_rows`); log-probs
    and kappa use those columns only. ``keep_hidden``: return the hidden states (bf16 under bf16 autocast:
    hidden size x 2 bytes per token, ~1/40 of the logits they stand for at a 150k vocabulary)."""

    def __init__(self, model, confidence_kind: str = "max_prob", temperature: float = 1.0,
                 vocab_rows: int | None = None, max_batch_tokens: int = 8192, keep_hidden: bool = True,
                 chunk_tokens: int = 1024):
        check_temperature(temperature)
        check_choice("confidence kind", confidence_kind, CONFIDENCE_KINDS)
        self.model = model
        self.confidence_kind = confidence_kind
        self.temperature = temperature
        self.vocab_rows = vocab_rows
        self.max_batch_tokens = max_batch_tokens
        self.keep_hidden = keep_hidden
        self.chunk_tokens = chunk_tokens

    @torch.no_grad()
    def score_rows(self, rows: Sequence[Row]) -> list[RowScores]:
        results = [RowScores([], [], None) for _ in rows]
        n_rows = sum(1 for r in rows if r.positions)
        if not n_rows:
            return results
        head = output_head(self.model)
        phase = Phase("teacher", total=n_rows, unit="seq")
        for batch in scored_batches([self.model], rows, self.max_batch_tokens):
            (hidden,) = batch.hidden
            kappa, logp = teacher_token_stats(hidden, head, batch.targets.to(hidden.device), self.vocab_rows,
                                              self.temperature, self.confidence_kind, self.chunk_tokens)
            kappa, logp = kappa.cpu().tolist(), logp.cpu().tolist()
            hidden = hidden.cpu() if self.keep_hidden else None
            start = 0
            for i, n in zip(batch.rows, batch.counts, strict=True):
                h = hidden[start : start + n] if hidden is not None else None
                results[i] = RowScores(logp[start : start + n], kappa[start : start + n], h)
                start += n
            phase.update(len(batch.rows))
        scored = sum(len(r.positions) for r in rows)
        phase.close(f"{n_rows} sequences, {scored} response tokens scored ({scored / max(phase.seconds, 1e-9):.0f}/s)")
        return results
