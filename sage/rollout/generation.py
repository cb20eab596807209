"""Generation backends behind one small interface.

The rollout loop hands every backend the *full* token sequence of each prompt plus an optional
session id per prompt. A backend with prefix caching (vLLM) can ignore the ids; the Hugging Face
backend here keeps one batched KV cache per set of sessions and only prefills the new suffix of a
session's sequence, which is what makes `transcript` mode cheap (prefill dominates CPU rollouts).
"""

from __future__ import annotations

import inspect
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from transformers import DynamicCache


@dataclass
class SamplingParams:
    """How to pick tokens. `greedy` ignores temperature/top-p (evaluation)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    greedy: bool = False
    stop_strings: tuple[str, ...] = ("</action>",)

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class Generation:
    token_ids: list[int]  # generated tokens, including the stop string / eos when produced
    logprobs: list[float]  # log-prob of each token under the sampling distribution
    text: str
    stopped: bool  # True when a stop string or eos ended it, False when max_new_tokens did


class Generator(Protocol):
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        session_ids: Sequence[Hashable] | None = None,
        keep_cache: bool = False,
    ) -> list[Generation]:
        """One answer per prompt. `session_ids` name the episode of each prompt; with `keep_cache`
        the caller promises each session's next prompt extends this one (prompt + answer + more)."""
        ...

    def end_sessions(self, session_ids: Sequence[Hashable]) -> None: ...


def sampling_logprobs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Log-probs of the distribution tokens are drawn from: temperature, then top-p renormalised.

    Greedy decoding records log-probs at temperature 1 (the model's own distribution)."""
    logits = logits.float()
    if params.greedy:
        return torch.log_softmax(logits, dim=-1)
    logp = torch.log_softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_logp, order = logp.sort(dim=-1, descending=True)
        cum = sorted_logp.exp().cumsum(dim=-1)
        drop_sorted = cum - sorted_logp.exp() >= params.top_p  # keep the smallest prefix reaching top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logp = torch.log_softmax(logp.masked_fill(drop, float("-inf")), dim=-1)
    return logp


@dataclass
class _Batch:
    """A batched KV cache whose rows are sessions; padding holes are masked out."""

    keys: list[Hashable]
    tokens: list[list[int]]  # the real tokens of each row (what the cache holds, without holes)
    cache: DynamicCache
    mask: torch.Tensor  # [B, S] 1 where the cache holds a real token
    next_logits: torch.Tensor | None = None


@dataclass
class HFGenerator:
    """Batched sampling with a KV cache on any `transformers` causal LM (left padding)."""

    model: torch.nn.Module
    tokenizer: object
    seed: int = 0
    _batch: _Batch | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = torch.Generator(device="cpu").manual_seed(self.seed)
        eos = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        eot = self.tokenizer.convert_tokens_to_ids("<|im_end|>") if hasattr(self.tokenizer, "convert_tokens_to_ids") else None
        if isinstance(eot, int) and eot != getattr(self.tokenizer, "unk_token_id", None):
            eos.add(eot)
        self.stop_ids = {i for i in eos if i is not None}
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        # transformers 5 renamed `past_key_values` to `cache`; accept both generations of the API.
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        params = inspect.signature(type(base).forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- session bookkeeping -------------------------------------------------
    def end_sessions(self, session_ids: Sequence[Hashable]) -> None:
        if self._batch is None:
            return
        gone = set(session_ids)
        keep = [i for i, k in enumerate(self._batch.keys) if k not in gone]
        self._select(keep)

    def _select(self, rows: list[int]) -> None:
        b = self._batch
        if not rows:
            self._batch = None
            return
        idx = torch.tensor(rows, device=b.mask.device)
        b.cache.reorder_cache(idx)
        b.keys = [b.keys[i] for i in rows]
        b.tokens = [b.tokens[i] for i in rows]
        b.mask = b.mask[idx]
        b.next_logits = None

    def _reusable(self, prompts, session_ids) -> bool:
        b = self._batch
        if b is None or session_ids is None or len(set(session_ids)) != len(session_ids):
            return False
        pos = {k: i for i, k in enumerate(b.keys)}
        if any(k not in pos for k in session_ids):
            return False
        for p, k in zip(prompts, session_ids, strict=True):
            old = b.tokens[pos[k]]
            if len(p) <= len(old) or list(p[: len(old)]) != old:
                return False
        self._select([pos[k] for k in session_ids])
        return True

    # -- model calls ---------------------------------------------------------
    @torch.no_grad()
    def _extend(self, chunks: list[list[int]]) -> torch.Tensor:
        """Append one left-padded chunk per row to the cache; returns the logits after each row's last token."""
        b = self._batch
        width = max(len(c) for c in chunks)
        ids = torch.full((len(chunks), width), self.pad_id, dtype=torch.long)
        new_mask = torch.zeros((len(chunks), width), dtype=torch.long)
        for i, c in enumerate(chunks):
            if c:
                ids[i, width - len(c) :] = torch.tensor(c)
                new_mask[i, width - len(c) :] = 1
        dev = self.device
        mask = torch.cat([b.mask, new_mask.to(b.mask.device)], dim=1) if b.mask.numel() else new_mask
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, -width:]
        out = self.model(
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev),
            position_ids=positions.to(dev),
            use_cache=True,
            logits_to_keep=1,  # the LM head on every prefill position would cost as much as the layers
            **{self._cache_kw: b.cache},
        )
        b.mask = mask
        for i, c in enumerate(chunks):
            b.tokens[i].extend(c)
        return out.logits[:, -1, :]

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        session_ids: Sequence[Hashable] | None = None,
        keep_cache: bool = False,
    ) -> list[Generation]:
        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        if not keep_cache:
            session_ids = None
        if self._reusable(prompts, session_ids):
            chunks = [list(p[len(t) :]) for p, t in zip(prompts, self._batch.tokens, strict=True)]
        else:
            keys = list(session_ids) if session_ids is not None else list(range(len(prompts)))
            self._batch = _Batch(
                keys=keys,
                tokens=[[] for _ in prompts],
                cache=DynamicCache(),
                mask=torch.zeros((len(prompts), 0), dtype=torch.long),
            )
            chunks = [list(p) for p in prompts]
        logits = self._extend(chunks)
        gens = self._decode(logits, params, keep_cache=session_ids is not None)
        if session_ids is None:
            self._batch = None
        return gens

    def _decode(self, logits: torch.Tensor, params: SamplingParams, keep_cache: bool) -> list[Generation]:
        n = logits.shape[0]
        out_ids: list[list[int]] = [[] for _ in range(n)]
        out_lp: list[list[float]] = [[] for _ in range(n)]
        finished = [False] * n
        stopped = [False] * n
        for step in range(params.max_new_tokens):
            logp = sampling_logprobs(logits, params).cpu()
            if params.greedy:
                tok = logp.argmax(dim=-1)
            else:
                tok = torch.multinomial(logp.exp(), 1, generator=self._rng).squeeze(1)
            chosen = logp.gather(1, tok[:, None]).squeeze(1)
            feed: list[list[int]] = []
            for i in range(n):
                if finished[i]:
                    feed.append([])
                    continue
                t = int(tok[i])
                out_ids[i].append(t)
                out_lp[i].append(float(chosen[i]))
                feed.append([t])
                if t in self.stop_ids or self._hit_stop_string(out_ids[i], params.stop_strings):
                    finished[i] = stopped[i] = True
            if all(finished) or step == params.max_new_tokens - 1:
                # A kept session's cache must hold every sampled token, so feed the last ones too.
                if keep_cache and any(feed):
                    self._extend(feed)
                break
            logits = self._extend(feed)
        return [
            Generation(ids, lps, self.tokenizer.decode(ids, skip_special_tokens=True), st)
            for ids, lps, st in zip(out_ids, out_lp, stopped, strict=True)
        ]

    def _hit_stop_string(self, ids: list[int], stops: tuple[str, ...]) -> bool:
        if not stops:
            return False
        tail = self.tokenizer.decode(ids[-8:], skip_special_tokens=False)
        return any(tail.rstrip().endswith(s) for s in stops)
