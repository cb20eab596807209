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


def all_reduce(x: torch.Tensor, op: str) -> torch.Tensor:
    """``x`` summed (``op="sum"``) or maxed (``"max"``) over ranks, on the host; ``x`` itself in one process."""
    if world()[1] == 1:
        return x
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    out = x.to(device)
    dist.all_reduce(out, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return out.cpu()
