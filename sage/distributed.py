"""The few collectives the data path needs; each is a no-op in a single process."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size), (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """Round-robin shard without padding, so every item is used exactly once over all ranks."""
    return list(items[rank::world_size])


def align_steps(
    denominators: Sequence[float], micro_counts: Sequence[int], weights: Sequence[float] | None = None
) -> tuple[list[float], list[int], list[float]]:
    """Make every rank run the same steps: global denominators and trained weights sum(g * kappa)
    (sums over ranks) and, per step, the largest micro-batch count of any rank (the others pad with
    empty items). ``weights`` defaults to the denominators."""
    weights = list(denominators) if weights is None else list(weights)
    _, size = world()
    if size == 1:
        return list(denominators), list(micro_counts), weights
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    n = torch.tensor([len(denominators)], device=backend_device)
    dist.all_reduce(n, op=dist.ReduceOp.MAX)
    steps = int(n.item())
    den = torch.zeros((2, steps), dtype=torch.float64, device=backend_device)
    den[0, : len(denominators)] = torch.tensor(list(denominators), dtype=torch.float64)
    den[1, : len(weights)] = torch.tensor(weights, dtype=torch.float64)
    cnt = torch.zeros(steps, dtype=torch.long, device=backend_device)
    cnt[: len(micro_counts)] = torch.tensor(list(micro_counts), dtype=torch.long)
    dist.all_reduce(den, op=dist.ReduceOp.SUM)
    dist.all_reduce(cnt, op=dist.ReduceOp.MAX)
    den, wts = den.cpu().tolist()
    return den, cnt.cpu().tolist(), wts
