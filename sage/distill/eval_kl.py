"""Reverse KL(student || teacher) per evaluation turn, on the episodes as the student played them.

An evaluation diagnostic (docs/METHOD.md, Evaluation): how far the student's own greedy play is, token by
token, from the frozen teacher's next-token distribution, whether or not a game is won. It reuses the
training path's pieces so the figure means what the loss means: forwards batched under a token budget
with right padding (`sage.forward`), final hidden states at the response positions only, float32 LM
heads (`head_logits`) in chunks of positions (never an [all positions, V] tensor), and
`token_divergence`'s reverse_kl at temperature 1. It runs as a `sage.progress.Phase`: a summary line per
validation batch, and after SIGTERM it stops at its next batch (`sage.preemption`), as the rollouts do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sage.distill.divergence import token_divergence
from sage.distill.fused import head_logits
from sage.forward import (
    budget_batches,
    model_device,
    output_head,
    pad_right,
    position_mask,
    predicting,
    selected_hidden,
)
from sage.progress import Phase
from sage.rollout.records import Episode

TurnKL = tuple[float, int]  # (sum of the turn's token KLs, number of response tokens)


def _rows(episodes: Sequence[Episode]) -> tuple[list[list[int]], list[list[int]], list[list[tuple[int, int]]]]:
    """Sequences to score, their response positions (increasing) and each position's (episode, turn):
    one row per transcript episode, one per turn in window mode (as `sage.samples` builds them)."""
    seqs, positions, owners = [], [], []
    for e, ep in enumerate(episodes):
        if ep.sequence_ids is not None:
            spans = []
            for k, t in enumerate(ep.turns):
                n = len(t.response_ids)
                if n and (t.offset < 1 or ep.sequence_ids[t.offset : t.offset + n] != list(t.response_ids)):
                    raise ValueError(f"episode {ep.game_id} turn {k}: response_ids are not at offset {t.offset}")
                spans += [(t.offset + j, (e, k)) for j in range(n)]
            if spans:
                spans.sort()
                seqs.append(list(ep.sequence_ids))
                positions.append([p for p, _ in spans])
                owners.append([o for _, o in spans])
            continue
        for k, t in enumerate(ep.turns):
            n, c = len(t.response_ids), len(t.context_ids)
            if not n:
                continue
            if not c:
                raise ValueError(f"episode {ep.game_id} turn {k} has no context_ids and the episode no sequence_ids")
            seqs.append(list(t.context_ids) + list(t.response_ids))
            positions.append(list(range(c, c + n)))
            owners.append([(e, k)] * n)
    return seqs, positions, owners


@torch.no_grad()
def turn_kl(
    student,
    teacher,
    episodes: Sequence[Episode],
    vocab_rows: int | None = None,
    max_batch_tokens: int = 8192,
    chunk_tokens: int = 1024,
) -> list[list[TurnKL]]:
    """Per episode, per turn: (sum over its response tokens of KL(p_S || p_T), token count).

    Both models run in eval mode (restored afterwards) under whatever autocast the caller holds; the
    heads run in float32 (float64 for float64 models). ``vocab_rows``: logit columns the models share."""
    out = [[(0.0, 0) for _ in ep.turns] for ep in episodes]
    seqs, positions, owners = _rows(episodes)
    if not seqs:
        return out
    modes = [(m, m.training) for m in (student, teacher)]
    for m, _ in modes:
        m.eval()
    try:
        s_head, t_head = output_head(student), output_head(teacher)
        s_dev, t_dev = model_device(student), model_device(teacher)
        sums: dict[tuple[int, int], float] = {}
        with Phase("eval KL", total=len(seqs), unit="seq") as phase:
            for batch in budget_batches([len(s) for s in seqs], max_batch_tokens):
                ids, attn = pad_right([seqs[i] for i in batch])
                select = predicting(position_mask(ids, [positions[i] for i in batch]))
                s_hidden = selected_hidden(student, ids.to(s_dev), attn.to(s_dev), select)
                t_hidden = selected_hidden(teacher, ids.to(t_dev), attn.to(t_dev), select)
                kl = []
                for s_h, t_h in zip(s_hidden.split(chunk_tokens), t_hidden.split(chunk_tokens), strict=True):
                    z_s = head_logits(s_h, s_head, vocab_rows)
                    z_t = head_logits(t_h, t_head, vocab_rows).to(z_s.device)
                    kl.append(token_divergence(z_s, z_t, None, "reverse_kl").double().cpu())
                keys = [o for i in batch for o in owners[i]]
                for key, v in zip(keys, torch.cat(kl).tolist(), strict=True):
                    sums[key] = sums.get(key, 0.0) + v
                phase.update(len(batch))
            phase.close(f"{len(seqs)} sequences, {sum(map(len, positions))} response tokens scored")
    finally:
        for m, was in modes:
            m.train(was)
    for (e, k), v in sums.items():
        out[e][k] = (v, len(episodes[e].turns[k].response_ids))
    return out
