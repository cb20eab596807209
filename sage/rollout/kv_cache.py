"""A batched KV cache whose rows are sessions of different lengths, each stored without holes.

transformers' DynamicCache appends the same number of columns to every row, so a batch whose rows get
chunks of different lengths (new observations) or stop at different steps accumulates padding columns
("holes") that every later step attends over and that grow turn after turn. Here every row writes its
new keys/values right after its own last token (per-row positions), so row r holds exactly its
``lengths[r]`` tokens in columns ``[0, lengths[r])``; the attention mask only hides the unused tail of
shorter rows. Rows can be reordered in place (`permute`) so that the rows of a forward are always a
contiguous block: live decode rows stay at the front and their cache is read through views, not copies.

One forward sees rows ``[first, first + b)``: `begin` sets where each of them writes its ``q`` new
columns; the model's attention layers then call `update`. Capacity grows by reallocation (amortised).
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.cache_utils import Cache

_LEN_STEP = 256  # column capacity grows in multiples of this (fewer reallocations)


class RaggedCache(Cache):
    """Per-layer buffers ``[rows, kv_heads, capacity, head_dim]``; `lengths` is the host mirror of each row's size."""

    def __init__(self) -> None:
        super().__init__(layers=[])
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        self.lengths: list[int] = []  # real tokens of each row in use
        self._first = 0
        self._starts: Tensor | None = None  # [b] write position of each row of the current forward
        self._kv_len = 0
        self._need_rows = 0
        self._need_len = 0

    # -- rows -------------------------------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        return len(self.lengths)

    def add_rows(self, n: int) -> None:
        """Append ``n`` empty rows (their buffers are allocated at the next forward)."""
        self.lengths += [0] * n
        self._need_rows = max(self._need_rows, len(self.lengths))

    def keep_rows(self, n: int) -> None:
        """Forget every row from ``n`` on (capacity is kept for reuse)."""
        del self.lengths[n:]

    def clear_row(self, row: int) -> None:
        self.lengths[row] = 0

    def permute(self, order: list[int]) -> None:
        """Row i becomes the old row ``order[i]``; ``order`` is a permutation of ``range(num_rows)``.

        Only rows that move are copied (a swap of two rows copies two rows per layer), and only the columns
        they use, not the buffers' spare capacity."""
        if sorted(order) != list(range(self.num_rows)):
            raise ValueError(f"not a permutation of the {self.num_rows} rows: {order}")
        moved = [i for i, o in enumerate(order) if o != i]
        self.lengths = [self.lengths[o] for o in order]
        if not moved or not self.keys:
            return
        self._grow_rows()
        used = max(self.lengths[i] for i in moved)  # a row reads only its first `length` columns
        if used == 0:
            return
        dst = torch.tensor(moved, device=self.keys[0].device)
        src = torch.tensor([order[i] for i in moved], device=self.keys[0].device)
        for buf in (*self.keys, *self.values):
            buf[dst, :, :used] = buf[src, :, :used]  # the right side is gathered first: overlapping moves are safe

    def _grow_rows(self) -> None:
        """Give the buffers a row for every row in use: rows added after the last forward (a session that
        joins later) have none yet, and a permutation may move them."""
        rows = self.keys[0].shape[0]
        if rows >= self.num_rows:
            return
        for bufs in (self.keys, self.values):
            for i, old in enumerate(bufs):
                bufs[i] = torch.cat([old, old.new_zeros((self.num_rows - rows, *old.shape[1:]))])

    # -- one forward ------------------------------------------------------------------------------
    def begin(self, first: int, starts: Tensor, q: int, kv_len: int) -> None:
        """Rows ``[first, first + len(starts))`` write ``q`` columns from ``starts`` (a device tensor);
        attention reads their first ``kv_len`` columns (the caller's mask hides what a row does not own)."""
        self._first, self._starts, self._kv_len = first, starts, kv_len
        self._need_rows = max(self._need_rows, first + starts.shape[0])
        self._need_len = max(self._need_len, kv_len)

    def _buffers(self, layer: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """This layer's buffers, allocated or grown (copying what they hold) to the capacity asked for."""
        if len(self.keys) <= layer:
            if len(self.keys) != layer:
                raise RuntimeError(f"layer {layer} updated before layer {len(self.keys)}")
            empty = like.new_zeros((0, like.shape[1], 0, like.shape[3]))
            self.keys.append(empty)
            self.values.append(empty.clone())
        k, v = self.keys[layer], self.values[layer]
        rows, cols = k.shape[0], k.shape[2]
        if rows < self._need_rows or cols < self._need_len:
            new_rows = max(rows, self._need_rows)
            want = max(self._need_len, int(cols * 1.5)) if cols < self._need_len else cols  # geometric growth
            new_cols = -(-want // _LEN_STEP) * _LEN_STEP
            grown = []
            for old in (k, v):
                buf = old.new_zeros((new_rows, old.shape[1], new_cols, old.shape[3]))
                buf[:rows, :, :cols] = old
                grown.append(buf)
            self.keys[layer], self.values[layer] = k, v = grown
        return k, v

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args, **kwargs):
        """Write this forward's keys/values at each row's own positions; return views of the rows' caches."""
        k_buf, v_buf = self._buffers(layer_idx, key_states)
        b, h, q, d = key_states.shape
        rows = slice(self._first, self._first + b)
        cols = self._starts[:, None] + torch.arange(q, device=key_states.device)[None, :]
        index = cols[:, None, :, None].expand(b, h, q, d)
        k_rows, v_rows = k_buf[rows], v_buf[rows]
        k_rows.scatter_(2, index, key_states.to(k_buf.dtype))
        v_rows.scatter_(2, index, value_states.to(v_buf.dtype))
        return k_rows[:, :, : self._kv_len], v_rows[:, :, : self._kv_len]

    # transformers asks these when it builds a mask itself, which happens only for a fresh prefill (no
    # mask passed: every row starts at column 0, causal); they describe the current forward's rows only.
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    def get_query_offset(self, *args, **kwargs) -> int:
        return 0

    def get_mask_sizes(self, *args, **kwargs) -> tuple[int, int]:
        return self._kv_len, 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))
