"""The epoch plan: the one interface between data and model.

`plan_steps` turns this rank's samples into the epoch's `OptimizerStep`s, each holding its `MicroBatch`es,
its *global* normalization denominator and whether it trains. Everything the step loss depends on is
settled here, all-reduce included, before any backward (docs/METHOD.md, Normalization): the
LightningModule's `training_step(mb)` only computes ``sum(g * kappa * l) / mb.denominator``, backwards it,
and steps the optimizer after ``mb.last``. So gradient accumulation and the number of ranks never change
the loss.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from sage.distill.objective import step_denominator
from sage.distributed import all_reduce
from sage.forward import budget_batches, pad_right
from sage.samples import Sample


@dataclass(frozen=True)
class Tokens:
    """Right-padded tensors of some samples (training forwards need no left padding)."""

    input_ids: Tensor  # [B, S] long
    attention_mask: Tensor  # [B, S] long
    loss_mask: Tensor  # [B, S] bool: response tokens
    gate: Tensor  # [B, S] float32, g_t of each response token's turn
    confidence: Tensor  # [B, S] float32, kappa
    teacher_logprobs: Tensor  # [B, S] float32, log pi_T(y) (0 where the teacher did not score)
    teacher_hidden: Tensor | None  # [N, H], rows in the row-major order of loss_mask; None: the loss reads none

    def to(self, device) -> Tokens:
        return Tokens(*(None if x is None else x.to(device) for x in (getattr(self, f.name) for f in fields(self))))


@dataclass(frozen=True)
class MicroBatch:
    """One forward/backward of an optimizer step, with what finishing that step needs."""

    tokens: Tokens | None  # None: a padding slot (zero loss) that keeps DDP ranks running the same backwards
    denominator: float  # the step's global denominator
    trains: bool  # the step's: some token of it, on some rank, carries weight (else no optimizer update)
    last: bool  # the step's last micro-batch: the optimizer steps after its backward

    @property
    def padding(self) -> bool:
        return self.tokens is None

    def to(self, device) -> MicroBatch:
        return self if self.tokens is None else replace(self, tokens=self.tokens.to(device))


def ends_step(batch) -> bool:
    """Whether a training batch is the last micro-batch of its optimizer step: where checkpoints are
    written and SIGTERM stops training (an exact resume cannot hold a half-accumulated gradient)."""
    return isinstance(batch, MicroBatch) and batch.last


@dataclass(frozen=True)
class OptimizerStep:
    micro_batches: list[MicroBatch]  # this rank's, padded to the largest count of any rank (at least one)
    denominator: float  # sum over every micro-batch of the step on every rank (docs/METHOD.md, Normalization)
    trains: bool  # the global sum(g * kappa) is > 0


def plan_steps(
    samples: Sequence[Sample], samples_per_step: int, max_tokens_per_micro_batch: int, pad_id: int,
    normalize: str, seed: int,
) -> list[OptimizerStep]:
    """This rank's samples -> the epoch's optimizer steps, the same number and shapes on every rank."""
    if samples_per_step < 1:
        raise ValueError(f"samples_per_step must be >= 1, got {samples_per_step}")
    # 1. Shuffle (seeded), cut into steps of `samples_per_step` samples.
    order = list(samples)
    random.Random(seed).shuffle(order)
    groups = [order[i : i + samples_per_step] for i in range(0, len(order), samples_per_step)]

    # 2. Per step: samples that train no token (every turn gated 0) are not forwarded, but their tokens
    #    still count in `opd`'s denominator; the rest are packed into micro-batches under the token budget.
    packed: list[list[Tokens]] = []
    skipped_tokens: list[int] = []
    for group in groups:
        kept = [s for s in group if s.trained]
        packed.append([collate(mb, pad_id) for mb in pack(kept, max_tokens_per_micro_batch)])
        skipped_tokens.append(sum(s.n_response for s in group if not s.trained))

    # 3. This rank's share of each step's denominator and of its trained weight sum(g * kappa) (the same
    #    number when normalize is `weighted`).
    def share(tokens: list[Tokens], how: str) -> float:
        return sum(float(step_denominator(t.loss_mask, t.gate, t.confidence, how)) for t in tokens)

    weight = [share(mbs, "weighted") for mbs in packed]
    if normalize == "weighted":
        own = weight
    else:  # opd: every response token, those of skipped turns included
        own = [share(mbs, "opd") + skipped for mbs, skipped in zip(packed, skipped_tokens, strict=True)]

    # 4. Across ranks: as many steps as the rank with the most; per step, the sums of denominator and weight
    #    and the largest micro-batch count (the other ranks pad with empty slots).
    n_steps = int(all_reduce(torch.tensor([len(packed)]), "max")[0])
    sums = torch.zeros((2, n_steps), dtype=torch.float64)
    sums[0, : len(own)] = torch.tensor(own, dtype=torch.float64)
    sums[1, : len(weight)] = torch.tensor(weight, dtype=torch.float64)
    counts = torch.zeros(n_steps, dtype=torch.long)
    counts[: len(packed)] = torch.tensor([len(mbs) for mbs in packed], dtype=torch.long)
    denominators, weights = all_reduce(sums, "sum").tolist()
    counts = all_reduce(counts, "max").tolist()

    # 5. The steps: this rank's micro-batches, then padding slots up to the global count (at least one).
    steps = []
    for i in range(n_steps):
        own_mbs = packed[i] if i < len(packed) else []
        n = max(counts[i], 1)
        den, trains = denominators[i], weights[i] > 0
        mbs = [MicroBatch(own_mbs[k] if k < len(own_mbs) else None, den, trains, last=k == n - 1) for k in range(n)]
        steps.append(OptimizerStep(mbs, den, trains))
    return steps


def pack(samples: Sequence[Sample], max_tokens: int) -> list[list[Sample]]:
    """Greedy packing by padded size (longest sequence x rows) under a token budget; a single sample
    longer than the budget gets a micro-batch of its own."""
    return [[samples[i] for i in group] for group in budget_batches([len(s.input_ids) for s in samples], max_tokens)]


def collate(samples: Sequence[Sample], pad_id: int) -> Tokens:
    ids, attn = pad_right([s.input_ids for s in samples], pad_id)
    hidden = [s.teacher_hidden for s in samples]
    if any(h is not None for h in hidden) and any(h is None for h in hidden):
        raise ValueError("a micro-batch mixes samples with and without teacher hidden states")
    return Tokens(
        input_ids=ids, attention_mask=attn,
        loss_mask=pad_right([s.loss_mask for s in samples], 0, torch.bool)[0],
        gate=pad_right([s.gate for s in samples], 0.0, torch.float32)[0],
        confidence=pad_right([s.confidence for s in samples], 1.0, torch.float32)[0],
        teacher_logprobs=pad_right([s.teacher_logprobs for s in samples], 0.0, torch.float32)[0],
        teacher_hidden=torch.cat(hidden) if hidden[0] is not None else None,
    )
