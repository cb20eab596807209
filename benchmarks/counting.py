"""What the benchmarks count work with: FLOPs and bytes of a decoder from token counts, and the matmul
probe (the machine's practical peak, measured in the same run). Imported by the scripts beside it."""

from __future__ import annotations

import time

import torch


class Shape:
    """FLOPs of a forward from token counts: 2 x linear parameters per token, 4 x heads x head_dim x layers
    per attended (query, key) pair, 2 x hidden x vocab per LM-head row; and the elements a decode step
    reads: every weight once, keys + values per cached token."""

    def __init__(self, config):
        h, self.layers, self.vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
        self.hidden, heads, kv = h, config.num_attention_heads, config.num_key_value_heads
        d = getattr(config, "head_dim", None) or h // heads
        self.linear = self.layers * (2 * h * heads * d + 2 * h * kv * d + 3 * h * config.intermediate_size)
        self.attn = 4 * heads * d * self.layers
        self.kv_elems = 2 * kv * d * self.layers  # keys + values per cached token
        tied = getattr(config, "tie_word_embeddings", True)
        self.weight_elems = self.linear + h * self.vocab * (1 if tied else 2)
        self.kv_bytes = 2 * self.kv_elems  # in bf16
        self.weight_bytes = 2 * self.weight_elems  # in bf16

    def flops(self, tokens: float, attended: float, head_rows: float) -> float:
        return 2.0 * self.linear * tokens + self.attn * attended + 2.0 * self.hidden * self.vocab * head_rows


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_probe(dtype: torch.dtype, size: int, device: str = "cpu", repeats: int = 8) -> float:
    """FLOP/s of a square matmul in `dtype` on `device` with this process's threads."""
    a = torch.randn(size, size, device=device).to(dtype)
    a @ a
    sync()
    t = time.perf_counter()
    for _ in range(repeats):
        a @ a
    sync()
    return 2 * size**3 * repeats / (time.perf_counter() - t)
