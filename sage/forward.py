"""Scoring and training forwards that compute only what is used: final hidden states at selected
positions, no KV cache, no logits anywhere else.

With a 150k vocabulary the LM head over every position would cost far more memory than the decoder
itself, so callers take the hidden states of the positions they score and run the head on those
alone (`sage.distill.fused.head_logits`, in float32). One home for the padding and batching helpers
that every forward shares: the scoring loop (`sage.scoring`: teacher scoring, evaluation KL, judge),
the epoch plan's micro-batches and the training step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def base_model(model):
    """The transformers model under a peft wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def output_head(model) -> torch.nn.Module:
    """The LM head (output embedding) of a causal LM, peft-wrapped or not."""
    return base_model(model).get_output_embeddings()


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def budget_batches(lengths: Sequence[int], max_tokens: int, max_rows: int | None = None) -> list[list[int]]:
    """Indices grouped longest-first so that rows x longest length <= max_tokens (a longer row goes alone).

    Sorting by length also keeps the rows of a batch alike, so padding stays small."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    for i in order:
        cur = batches[-1] if batches else None
        if cur is None or (len(cur) + 1) * lengths[cur[0]] > max_tokens or (max_rows and len(cur) >= max_rows):
            batches.append([i])
        else:
            cur.append(i)
    return batches


def pad_right(seqs: Sequence[Sequence], fill=0, dtype: torch.dtype = torch.long, device=None) -> tuple[Tensor, Tensor]:
    """Right-padded values ``[B, S]`` (``fill`` after each row's end) and the attention mask (1 on real
    entries): no position bookkeeping, no fully masked rows (training and scoring forwards never need
    left padding). Also pads per-token fields of the same rows (masks, gates, weights)."""
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), fill, dtype=dtype)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(list(s), dtype=dtype)
        mask[i, : len(s)] = 1
    return out.to(device), mask.to(device)


def position_mask(like: Tensor, positions: Sequence[Sequence[int]]) -> Tensor:
    """``[B, S]`` bool shaped like ``like``: True at row b's ``positions[b]``."""
    mask = torch.zeros(like.shape, dtype=torch.bool, device=like.device)
    for row, pos in enumerate(positions):
        mask[row, list(pos)] = True
    return mask


def predicting(targets: Tensor) -> Tensor:
    """[B, S] bool of the positions whose output predicts a target: position j predicts token j + 1."""
    select = torch.zeros_like(targets, dtype=torch.bool)
    select[:, :-1] = targets[:, 1:].bool()
    return select


def selected_hidden(model, input_ids: Tensor, attention_mask: Tensor, select: Tensor) -> Tensor:
    """Final hidden states ``[N, H]`` at the positions where ``select`` ``[B, S]`` is True, row-major.

    The decoder runs with ``use_cache=False`` (a scoring or training forward never reuses keys/values);
    gradients flow when the caller has them on (the student in a training step)."""
    decoder = base_model(model).get_decoder()
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return hidden[select.to(hidden.device)]
