"""Generation backends behind one small interface, and the Hugging Face backend used for rollouts.

The rollout loop hands a backend the *full* token sequence of each prompt plus an optional session id
per prompt. A backend with prefix caching (vLLM) can ignore the ids. `HFGenerator` keeps one KV-cache
row per session (`RaggedCache`: no padding holes) and prefills only the new suffix of a session's
sequence, which is what makes `transcript` mode cheap. Per decode step:

- only rows still generating are run (finished rows are swapped out of the live block at once);
- tokens are chosen on the model's device, and only the chosen ids, their log-probs and a stop flag
  reach the host (O(rows) bytes, `sage.rollout.sampling`);
- stop strings are matched on token ids by transformers' `StopStringCriteria` (its per-token tables
  are built once per tokenizer), never by decoding text.
Prompts of different lengths are prefilled in groups of similar length, so padding stays small.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, fields
from typing import Protocol

import torch
from torch import Tensor
from transformers.generation.stopping_criteria import StopStringCriteria

from sage.forward import base_model, pad_right
from sage.rollout.attention import NAME as GROUPED_SDPA
from sage.rollout.kv_cache import RaggedCache
from sage.rollout.sampling import SamplingParams, pick_tokens, sampling_logprobs

__all__ = ["Generation", "GenerationStats", "Generator", "HFGenerator", "SamplingParams", "sampling_logprobs"]
MASK_STYLES = {"sdpa": "bool", "eager": "additive"}


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


@dataclass
class GenerationStats:
    """Work counters (cumulative) for benchmarks and progress displays."""

    prefill_tokens: int = 0  # real prompt tokens run through the model
    prefill_padded: int = 0  # prompt positions run, padding included
    prefill_attended: int = 0  # sum over real prompt tokens of the key columns each one attends to
    decode_steps: int = 0
    decode_row_steps: int = 0  # rows run through the model by decode steps
    decode_attended: int = 0  # sum over decode rows of the key columns each one attends to
    generated_tokens: int = 0
    host_bytes: int = 0  # bytes moved between host and device by decode steps (ids, log-probs, flags)
    prefill_seconds: float = 0.0  # wall time of prefill forwards (device-synchronised by the first pick)
    decode_seconds: float = 0.0  # wall time of decode steps (each ends with a device -> host copy)

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class HFGenerator:
    """Batched sampling on any `transformers` decoder-only model with a ragged, session-keyed KV cache.

    ``prefill_tokens``: padded-token budget of one prefill forward (bounds activation memory);
    ``prefill_fill``: a prefill group takes another (shorter) prompt only while at least this share of
    its padded positions stays real."""

    def __init__(self, model, tokenizer, seed: int = 0, prefill_tokens: int = 8192, prefill_fill: float = 0.95):
        if prefill_tokens < 1:
            raise ValueError(f"prefill_tokens must be >= 1, got {prefill_tokens}")
        if not 0 < prefill_fill <= 1:
            raise ValueError(f"prefill_fill must be in (0, 1], got {prefill_fill}")
        self.model, self.tokenizer, self.seed = model, tokenizer, seed
        self.prefill_tokens, self.prefill_fill = prefill_tokens, prefill_fill
        base = base_model(model)
        self._decoder, self._head = base.get_decoder(), base.get_output_embeddings()
        impl = getattr(base.config, "_attn_implementation", None) or "eager"
        if impl not in MASK_STYLES:
            raise ValueError(
                f"rollout generation needs attn_implementation 'sdpa' or 'eager' (ragged per-row masks); "
                f"the model uses {impl!r}: set model.*.attn_implementation: sdpa"
            )
        self._mask_style = MASK_STYLES[impl]
        self._config = base.config
        self._attention = GROUPED_SDPA if impl == "sdpa" else impl  # see sage.rollout.attention
        params = inspect.signature(type(self._decoder).forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # transformers >= 5.x renamed it
        self.vocab = min(len(tokenizer), self._head.weight.shape[0])  # never sample padded head rows
        stop = {tokenizer.eos_token_id, tokenizer.pad_token_id}
        eot = tokenizer.convert_tokens_to_ids("<|im_end|>") if hasattr(tokenizer, "convert_tokens_to_ids") else None
        if isinstance(eot, int) and eot != getattr(tokenizer, "unk_token_id", None):
            stop.add(eot)
        self.stop_ids = {i for i in stop if i is not None}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.stats = GenerationStats()
        self._rng: torch.Generator | None = None
        self._criteria: dict[tuple[str, ...], StopStringCriteria] = {}
        self._cache = RaggedCache()
        self._keys: list[Hashable | None] = []  # session of each cache row
        self._tokens: list[list[int]] = []  # the tokens each cache row holds

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- sampler state (a rollout stopped at a turn boundary resumes with it) -----------------------
    def get_rng_state(self) -> torch.Tensor | None:
        return None if self._rng is None else self._rng.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        self._rng = torch.Generator(device=self.device)
        self._rng.set_state(state)

    # -- sessions ---------------------------------------------------------------------------------
    def end_sessions(self, session_ids: Sequence[Hashable]) -> None:
        gone = set(session_ids)
        keep = [r for r, k in enumerate(self._keys) if k not in gone]
        if len(keep) < len(self._keys):
            self._reorder(keep + [r for r in range(len(self._keys)) if r not in set(keep)])
            self._drop_rows_from(len(keep))

    def _reorder(self, order: list[int]) -> None:
        self._cache.permute(order)
        self._keys = [self._keys[o] for o in order]
        self._tokens = [self._tokens[o] for o in order]

    def _drop_rows_from(self, n: int) -> None:
        self._cache.keep_rows(n)
        del self._keys[n:], self._tokens[n:]

    def _plan_rows(self, prompts, keys) -> list[list[int]]:
        """Give each prompt a cache row (its session's, or a new one) and return the chunk each row must
        prefill. Afterwards prompt i sits in row i (rows of other sessions follow, untouched)."""
        if keys is None:
            self._drop_rows_from(0)
        where = {k: r for r, k in enumerate(self._keys)}
        rows, chunks = [], []
        for i, p in enumerate(prompts):
            r = where.get(keys[i]) if keys is not None else None
            if r is not None and len(p) > len(self._tokens[r]) and list(p[: len(self._tokens[r])]) == self._tokens[r]:
                chunk = list(p[len(self._tokens[r]) :])
            else:
                if r is None:
                    r = len(self._keys)
                    self._cache.add_rows(1)
                    self._keys.append(keys[i] if keys is not None else None)
                    self._tokens.append([])
                self._cache.clear_row(r)
                self._tokens[r] = []
                chunk = list(p)
            rows.append(r)
            chunks.append(chunk)
        taken = set(rows)
        self._reorder(rows + [r for r in range(len(self._keys)) if r not in taken])
        return chunks

    # -- model calls --------------------------------------------------------------------------------
    def _mask(self, keep: Tensor) -> Tensor:
        """[b, q, kv] bool (True = attend) -> the 4D mask the attention implementation takes."""
        keep = keep[:, None]
        if self._mask_style == "bool":
            return keep
        zero = torch.zeros((), dtype=torch.float32, device=keep.device)
        return torch.where(keep, zero, torch.finfo(torch.float32).min)

    def _forward(self, first: int, ids: Tensor, starts: Tensor, kv_len: int, last: Tensor | None,
                 fresh: bool = False) -> Tensor:
        """Run rows [first, first + b) on `ids` [b, q] written from `starts` (all 0 when `fresh`); logits
        [b, V] after position `last`."""
        q = ids.shape[1]
        positions = starts[:, None] + torch.arange(q, device=ids.device)[None, :]
        if fresh and q > 1:
            # every row starts at column 0 (a fresh prefill): plain causal attention, which transformers
            # hands to SDPA as is_causal (half the work of an explicit mask); right padding only follows
            # a row's real tokens, so no real query sees it
            mask = None
        else:
            mask = self._mask(torch.arange(kv_len, device=ids.device)[None, None, :] <= positions[:, :, None])
        self._cache.begin(first, starts, q, kv_len)
        out = self._decoder(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{self._cache_kw: self._cache},
        )
        hidden = out.last_hidden_state
        hidden = hidden[:, -1] if last is None else hidden[torch.arange(ids.shape[0], device=ids.device), last]
        return self._head(hidden)[:, : self.vocab]

    def _prefill(self, chunks: list[list[int]], params: SamplingParams) -> tuple[Tensor, Tensor]:
        """Prefill rows [0, len(chunks)) (sorted longest chunk first) in groups; first token and log-prob per row."""
        dev = self.device
        toks, lps = [], []
        a = 0
        while a < len(chunks):
            width, real, b = len(chunks[a]), len(chunks[a]), a + 1
            while (b < len(chunks) and (b - a + 1) * width <= self.prefill_tokens
                   and real + len(chunks[b]) >= self.prefill_fill * (b - a + 1) * width):
                real += len(chunks[b])
                b += 1
            ids = pad_right(chunks[a:b], self.pad_id)[0]
            starts_host = self._cache.lengths[a:b]
            starts = torch.tensor(starts_host, dtype=torch.long, device=dev)
            last = torch.tensor([len(c) - 1 for c in chunks[a:b]], device=dev)
            logits = self._forward(a, ids.to(dev), starts, max(starts_host) + width, last, fresh=max(starts_host) == 0)
            tok, lp = pick_tokens(logits, params, self._rng)
            toks.append(tok)
            lps.append(lp)
            for i in range(a, b):
                n, s = len(chunks[i]), self._cache.lengths[i]
                self.stats.prefill_attended += n * s + n * (n + 1) // 2
                self._cache.lengths[i] += n
                self._tokens[i].extend(chunks[i])
            self.stats.prefill_tokens += real
            self.stats.prefill_padded += (b - a) * width
            a = b
        return torch.cat(toks), torch.cat(lps)

    def _stop_flags(self, generated: Tensor, stop_strings: tuple[str, ...]) -> Tensor:
        if not stop_strings:
            return torch.zeros(generated.shape[0], dtype=torch.bool, device=generated.device)
        if stop_strings not in self._criteria:
            self._criteria[stop_strings] = StopStringCriteria(self.tokenizer, list(stop_strings))
        return self._criteria[stop_strings](generated, None)

    # -- the public call ----------------------------------------------------------------------------
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
        keys = list(session_ids) if keep_cache and session_ids is not None else None
        if keys is not None and len(set(keys)) != len(keys):
            raise ValueError(f"session ids must be distinct, got {keys}")
        dev = self.device
        if self._rng is None or self._rng.device != dev:
            self._rng = torch.Generator(device=dev).manual_seed(self.seed)
        before = self._config._attn_implementation
        self._config._attn_implementation = self._attention
        try:
            return self._generate(prompts, params, keys)
        finally:
            self._config._attn_implementation = before

    def _generate(self, prompts, params: SamplingParams, keys) -> list[Generation]:
        # Longest chunk first: prefill groups are contiguous rows of similar length.
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]) + self._held(keys, i))
        prompts = [prompts[i] for i in order]
        keys = [keys[i] for i in order] if keys is not None else None
        chunks = self._plan_rows(prompts, keys)
        by_len = sorted(range(len(chunks)), key=lambda i: -len(chunks[i]))
        if by_len != list(range(len(chunks))):  # prefix reuse changed the ranking: reorder once more
            self._reorder(by_len + list(range(len(chunks), len(self._keys))))
            order = [order[i] for i in by_len]
            chunks = [chunks[i] for i in by_len]
        gens = self._decode(chunks, params, order)
        if keys is None:
            self._drop_rows_from(0)
        return gens

    def _held(self, keys, i: int) -> int:
        """Tokens already cached for prompt i's session (0 when none): the ranking key is the new part."""
        if keys is None or keys[i] not in self._keys:
            return 0
        return len(self._tokens[self._keys.index(keys[i])])

    def _decode(self, chunks: list[list[int]], params: SamplingParams, order: list[int]) -> list[Generation]:
        m, dev, stats = len(chunks), self.device, self.stats
        t0 = time.perf_counter()
        tok, lp = self._prefill(chunks, params)
        owner = list(order)  # owner[r]: the caller's index of the prompt in live row r
        out_ids: list[list[int]] = [[] for _ in range(m)]
        out_lp: list[list[float]] = [[] for _ in range(m)]
        stopped = [False] * m
        generated = torch.empty((m, params.max_new_tokens), dtype=torch.long, device=dev)
        lengths = torch.tensor(self._cache.lengths[:m], dtype=torch.long, device=dev)
        n = m
        t1 = t0
        for step in range(params.max_new_tokens):
            generated[:n, step] = tok
            flags = self._stop_flags(generated[:n, : step + 1], params.stop_strings)
            packed = torch.stack([tok.double(), lp.double(), flags.double()], dim=1).cpu()  # one small copy
            if step == 0:  # that copy waited for the prefill: the rest is decoding
                t1 = time.perf_counter()
                stats.prefill_seconds += t1 - t0
            stats.host_bytes += packed.numel() * packed.element_size()
            stats.generated_tokens += n
            live = []
            for r, (t, logp, hit) in enumerate(packed.tolist()):
                t = int(t)
                out_ids[owner[r]].append(t)
                out_lp[owner[r]].append(logp)
                if hit or t in self.stop_ids:
                    stopped[owner[r]] = True
                else:
                    live.append(r)
            if not live or step == params.max_new_tokens - 1:
                break
            if len(live) < n:  # finished rows leave the live block: swap them behind it
                perm = _compaction(live, n)
                self._reorder(perm + list(range(n, len(self._keys))))
                index = torch.tensor(perm, device=dev)
                stats.host_bytes += index.numel() * index.element_size()
                owner = [owner[i] for i in perm]
                tok, lengths, generated = tok[index], lengths[index], generated[index]
                n = len(live)
                tok, lengths = tok[:n], lengths[:n]
            kv_len = max(self._cache.lengths[:n]) + 1
            stats.decode_attended += sum(self._cache.lengths[:n]) + n
            logits = self._forward(0, tok[:, None], lengths, kv_len, None)
            for r in range(n):
                self._tokens[r].append(out_ids[owner[r]][-1])
                self._cache.lengths[r] += 1
            lengths = lengths + 1
            stats.decode_steps += 1
            stats.decode_row_steps += n
            tok, lp = pick_tokens(logits, params, self._rng)
        stats.decode_seconds += time.perf_counter() - t1
        gens = [Generation([], [], "", False)] * m
        for i in range(m):
            text = self.tokenizer.decode(out_ids[i], skip_special_tokens=True)
            gens[i] = Generation(out_ids[i], out_lp[i], text, stopped[i])
        return gens


def _compaction(live: list[int], n: int) -> list[int]:
    """A permutation of range(n) that brings the `live` rows to the front with the fewest moves:
    each finished row inside the new live block swaps with a live row behind it."""
    k, alive = len(live), set(live)
    holes = [r for r in range(k) if r not in alive]
    donors = [r for r in live if r >= k]
    perm = list(range(n))
    for h, d in zip(holes, donors, strict=True):
        perm[h], perm[d] = d, h
    return perm
