"""Token selection on the model's device: temperature, top-p, greedy, and the log-prob of each pick.

Only the chosen ids and their log-probs leave the device (O(rows) bytes per decode step); the full
``[rows, vocab]`` distribution never does. Random draws come from a generator on the same device, so a
seed fixes the samples for a given batch composition.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sage.specs import check_range, check_temperature


@dataclass
class SamplingParams:
    """How to pick tokens. `greedy` ignores temperature/top-p (evaluation)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    greedy: bool = False
    stop_strings: tuple[str, ...] = ("</action>",)

    def __post_init__(self) -> None:
        check_temperature(self.temperature)  # greedy=True is argmax
        check_range("top_p", self.top_p, 0.0, 1.0, low_open=True)
        check_range("max_new_tokens", self.max_new_tokens, 1)
        self.stop_strings = tuple(self.stop_strings)


def sampling_logprobs(logits: Tensor, params: SamplingParams) -> Tensor:
    """Log-probs ``[rows, V]`` (float32; float64 logits stay float64) of the distribution tokens are drawn from: temperature, then top-p
    renormalised over the smallest prefix of the sorted distribution reaching ``top_p``.

    Greedy decoding records log-probs at temperature 1 (the model's own distribution)."""
    if logits.dtype != torch.float64:
        logits = logits.float()
    if params.greedy:
        return torch.log_softmax(logits, dim=-1)
    logp = torch.log_softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_logp, order = logp.sort(dim=-1, descending=True)
        p = sorted_logp.exp()
        drop_sorted = p.cumsum(dim=-1) - p >= params.top_p  # mass before a token already reaches top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logp = torch.log_softmax(logp.masked_fill(drop, float("-inf")), dim=-1)
    return logp


def pick_tokens(logits: Tensor, params: SamplingParams, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """(token ids ``[rows]``, their log-probs ``[rows]``), both still on the logits' device.

    Sampling inverts the cumulative distribution with one uniform draw per row (float64 sums, so the
    vocabulary's tail keeps its mass): `torch.multinomial` draws one exponential number per vocabulary
    entry, which cost ~10 ms per step for 16 rows x 49k tokens on a CPU."""
    logp = sampling_logprobs(logits, params)
    if params.greedy:
        tok = logp.argmax(dim=-1)
    else:
        cdf = logp.double().exp().cumsum(dim=-1)
        u = torch.rand((cdf.shape[0], 1), generator=generator, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
        # right=True: the first entry whose cdf exceeds u, so a zero-probability token is never picked
        tok = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp(max=cdf.shape[1] - 1)
    return tok, logp.gather(1, tok[:, None]).squeeze(1)
