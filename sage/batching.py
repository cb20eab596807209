"""From episodes to optimizer steps: samples, token-budget micro-batches, padded tensors.

Samples are grouped into optimizer steps and each step is packed into micro-batches; one dataloader
item is one micro-batch carrying its step's *global* normalization denominator (summed over every
micro-batch and rank before any backward) and a `step_end` flag, so gradient accumulation never
changes the loss (docs/METHOD.md, Normalization). Turns whose gate is 0 are not forwarded at all (their
loss weight is 0) but their tokens still count in the `opd` denominator.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sage.distill.objective import step_denominator
from sage.forward import budget_batches, pad_right
from sage.rollout.records import Episode


@dataclass
class Sample:
    """One training sequence. Per-token lists align with input_ids; position j is a response token
    when loss_mask[j] == 1 (predicted from position j-1)."""

    input_ids: list[int]
    loss_mask: list[int]
    gate: list[float]
    confidence: list[float]
    teacher_logprobs: list[float]
    teacher_hidden: torch.Tensor | None = None  # [n_response, H]: one row per loss_mask position, in order

    @property
    def n_response(self) -> int:
        return sum(self.loss_mask)


@dataclass
class StepData:
    micro_batches: list[dict[str, torch.Tensor]]
    skipped_tokens: int  # response tokens of gate-0 turns, not forwarded, still counted by `opd`

    def denominator(self, normalize: str) -> float:
        """This rank's share of the step's normalization denominator (docs/METHOD.md, Normalization)."""
        total = sum(
            float(step_denominator(mb["loss_mask"], mb["gate"], mb["confidence"], normalize))
            for mb in self.micro_batches
        )
        return total + (self.skipped_tokens if normalize == "opd" else 0.0)


def _turn_fields(turn) -> tuple[list[float], list[float]]:
    n = len(turn.response_ids)
    conf = list(turn.confidence) if turn.confidence is not None else [1.0] * n
    tlp = list(turn.teacher_logprobs) if turn.teacher_logprobs is not None else [0.0] * n
    return conf, tlp


def _hidden_rows(turns, n_rows: int) -> torch.Tensor | None:
    """The turns' teacher hidden states stacked in token order; zero rows for turns the teacher did not
    score (gate 0: their weight is 0, the loss drops them). None when no turn was scored (SFT)."""
    scored = [t.teacher_hidden for t in turns if t.teacher_hidden is not None]
    if not scored:
        return None
    like = scored[0]
    parts = [t.teacher_hidden if t.teacher_hidden is not None else like.new_zeros((len(t.response_ids), like.shape[1]))
             for t in turns]
    out = torch.cat(parts) if len(parts) > 1 else parts[0]
    if out.shape[0] != n_rows:
        raise ValueError(f"teacher hidden states for {out.shape[0]} tokens, but the sample has {n_rows} response tokens")
    return out


def window_samples(episodes: Sequence[Episode]) -> list[Sample]:
    """One sample per turn: the exact context the policy saw followed by its response."""
    out = []
    for ep in episodes:
        for t in ep.turns:
            n, c = len(t.response_ids), len(t.context_ids)
            conf, tlp = _turn_fields(t)
            out.append(
                Sample(
                    input_ids=list(t.context_ids) + list(t.response_ids),
                    loss_mask=[0] * c + [1] * n,
                    gate=[0.0] * c + [float(t.gate)] * n,
                    confidence=[1.0] * c + conf,
                    teacher_logprobs=[0.0] * c + tlp,
                    teacher_hidden=_hidden_rows([t], n),
                )
            )
    return out


def transcript_samples(episodes: Sequence[Episode]) -> list[Sample]:
    """One sample per episode: the whole append-only chat, the student's tokens marked."""
    out = []
    for ep in episodes:
        if ep.sequence_ids is None:
            raise ValueError(f"episode {ep.game_id} has no sequence_ids: it was not rolled out in transcript mode")
        n = len(ep.sequence_ids)
        gate, conf, tlp = [0.0] * n, [1.0] * n, [0.0] * n
        for t in ep.turns:
            c, lp = _turn_fields(t)
            for k in range(len(t.response_ids)):
                gate[t.offset + k] = float(t.gate)
                conf[t.offset + k] = c[k]
                tlp[t.offset + k] = lp[k]
        turns = sorted((t for t in ep.turns if t.response_ids), key=lambda t: t.offset)
        hidden = _hidden_rows(turns, sum(ep.student_mask))
        out.append(Sample(list(ep.sequence_ids), list(ep.student_mask), gate, conf, tlp, hidden))
    return out


def drop_skipped(samples: Sequence[Sample]) -> tuple[list[Sample], int]:
    """Remove samples whose every response token has gate 0; return them as a token count."""
    keep, skipped = [], 0
    for s in samples:
        if any(g > 0 and m for g, m in zip(s.gate, s.loss_mask, strict=True)):
            keep.append(s)
        else:
            skipped += s.n_response
    return keep, skipped


def micro_batches(samples: Sequence[Sample], max_tokens: int) -> list[list[Sample]]:
    """Greedy packing by padded size (longest sequence x rows) under a token budget; a single sample
    longer than the budget gets a micro-batch of its own."""
    return [[samples[i] for i in group] for group in budget_batches([len(s.input_ids) for s in samples], max_tokens)]


def collate(samples: Sequence[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch into tensors (training forwards need no left padding)."""
    ids, attn = pad_right([s.input_ids for s in samples], pad_id)
    batch = {
        "input_ids": ids, "attention_mask": attn,
        "loss_mask": pad_right([s.loss_mask for s in samples], 0, torch.bool)[0],
        "gate": pad_right([s.gate for s in samples], 0.0, torch.float32)[0],
        "confidence": pad_right([s.confidence for s in samples], 1.0, torch.float32)[0],
        "teacher_logprobs": pad_right([s.teacher_logprobs for s in samples], 0.0, torch.float32)[0],
    }
    hidden = [s.teacher_hidden for s in samples]
    if any(h is not None for h in hidden):
        if any(h is None for h in hidden):
            raise ValueError("a micro-batch mixes samples with and without teacher hidden states")
        batch["teacher_hidden"] = torch.cat(hidden)  # rows in the row-major order of loss_mask
    return batch


def build_steps(
    samples: Sequence[Sample],
    samples_per_step: int,
    max_tokens_per_micro_batch: int,
    pad_id: int,
    seed: int,
    skip_gated: bool = True,
) -> list[StepData]:
    """Shuffle (seeded), cut into optimizer steps, pack each step into micro-batches."""
    if samples_per_step < 1:
        raise ValueError(f"samples_per_step must be >= 1, got {samples_per_step}")
    order = list(samples)
    random.Random(seed).shuffle(order)
    steps = []
    for start in range(0, len(order), samples_per_step):
        group = order[start : start + samples_per_step]
        kept, skipped = drop_skipped(group) if skip_gated else (group, 0)
        mbs = [collate(mb, pad_id) for mb in micro_batches(kept, max_tokens_per_micro_batch)] if kept else []
        steps.append(StepData(mbs, skipped))
    return steps


def flatten_steps(
    steps: Sequence[StepData], denominators: Sequence[float], micro_per_step: Sequence[int],
    weights: Sequence[float] | None = None,
) -> list[dict]:
    """One dataloader item per micro-batch, in step order, each carrying its step's *global*
    denominator. `micro_per_step[i]` >= the step's own micro-batches: the rest are empty items so
    every rank runs the same number of backward passes (DDP needs that)."""
    items: list[dict] = []
    for i, n_micro in enumerate(micro_per_step):
        mbs = steps[i].micro_batches if i < len(steps) else []
        for k in range(max(n_micro, 1)):
            item = dict(mbs[k]) if k < len(mbs) else {}
            item["denominator"] = torch.tensor(float(denominators[i]))
            # the step's global sum(g * kappa): 0 means no token is trained, so no optimizer update
            item["step_weight"] = torch.tensor(float((denominators if weights is None else weights)[i]))
            item["step_end"] = k == max(n_micro, 1) - 1
            items.append(item)
    return items
