"""Grouped-query attention over the ragged KV cache without copying the keys and values.

transformers' SDPA path repeats every key/value head for its query heads (`repeat_kv`) whenever an
attention mask is given, which the ragged rollout cache always needs: a copy of the whole cache per
layer and decode step, n_rep times its size (3x for SmolLM2, 6x for Qwen2.5-1.5B), that grows with the
history. Here the query heads that share a key/value head are laid along the query axis instead, so
one SDPA call per layer reads each cached key and value once, with the mask tiled over the group.
Decode steps (a few query rows per head) use two plain matmuls instead of SDPA: the CPU flash kernel
spends more on its mask handling than on the few FLOPs a decode step has (2.6x faster attention at a
2k-token history on the project's CPU; on a GPU both read the cache once). Registered as a
transformers attention implementation and switched on only while `HFGenerator` runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from sage.upcast import upcast

NAME = "sage_grouped_sdpa"


def grouped_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """query [b, Hq, q, D], key/value [b, Hkv, S, D], mask [b, 1, q, S] (bool: True attends) or None
    (plain causal); returns ([b, q, Hq, D], None) like transformers' attention functions."""
    b, hq, q, d = query.shape
    hkv = key.shape[1]
    rep = hq // hkv
    if attention_mask is None:  # a fresh prefill: plain causal; its keys are only the prompt, so repeat them
        if rep > 1:
            key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, scale=scaling, is_causal=q > 1)
        return out.transpose(1, 2).contiguous(), None
    mask = attention_mask[..., : key.shape[-2]]
    if rep > 1:  # query head h reads kv head h // rep: lay each group's heads along the query axis
        query = query.reshape(b, hkv, rep * q, d)
        mask = mask.unsqueeze(2).expand(-1, -1, rep, -1, -1).reshape(mask.shape[0], 1, rep * q, mask.shape[-1])
    if rep * q <= 16:  # decode: a few query rows per head; plain matmuls read each key/value once
        scale = scaling if scaling is not None else d**-0.5
        scores = torch.matmul(query, key.transpose(-1, -2))
        scores = upcast(scores) * scale  # softmax in >= fp32
        scores = scores.masked_fill(~mask, float("-inf"))
        out = torch.matmul(torch.softmax(scores, dim=-1).to(value.dtype), value)
    else:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, scale=scaling)
    return out.reshape(b, hq, q, d).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, grouped_sdpa)
