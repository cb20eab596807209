"""Reverse KL(student || teacher) per evaluation turn, on the episodes as the student played them.

An evaluation diagnostic (docs/METHOD.md, Evaluation): how far the student's own greedy play is, token by
token, from the frozen teacher's next-token distribution, whether or not a game is won. It reuses the
training path's pieces so the figure means what the loss means: the samples' rows and the one scoring
loop (`sage.scoring`: forwards batched under a token budget with right padding, final hidden states at
the response positions only), float32 LM heads (`head_logits`) in chunks of positions (never an
[all positions, V] tensor), and `token_divergence`'s reverse_kl at temperature 1. It runs as a
`sage.progress.Phase`: a summary line per validation batch, and after SIGTERM it stops at its next batch
(`sage.preemption`), as the rollouts do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sage.distill.divergence import token_divergence
from sage.distill.fused import head_logits
from sage.forward import output_head
from sage.progress import Phase
from sage.rollout.context import Context, recorded_context
from sage.rollout.records import Episode
from sage.scoring import episode_rows, scored_batches

TurnKL = tuple[float, int]  # (sum of the turn's token KLs, number of response tokens)


@torch.no_grad()
def turn_kl(
    student,
    teacher,
    episodes: Sequence[Episode],
    vocab_rows: int | None = None,
    max_batch_tokens: int = 8192,
    chunk_tokens: int = 1024,
    context: Context | None = None,
) -> list[list[TurnKL]]:
    """Per episode, per turn: (sum over its response tokens of KL(p_S || p_T), token count).

    Both models run in eval mode (restored afterwards) under whatever autocast the caller holds; the
    heads run in float32 (float64 for float64 models). ``vocab_rows``: logit columns the models share.
    ``context``: how the episodes were played (`sage.rollout.context`); None reads it from their records."""
    out = [[(0.0, 0) for _ in ep.turns] for ep in episodes]
    rows = [r for r in episode_rows(episodes, context or recorded_context(episodes)) if r.positions]
    if not rows:
        return out
    modes = [(m, m.training) for m in (student, teacher)]
    for m, _ in modes:
        m.eval()
    try:
        s_head, t_head = output_head(student), output_head(teacher)
        sums: dict[tuple[int, int], float] = {}
        with Phase("eval KL", total=len(rows), unit="seq") as phase:
            for batch in scored_batches([student, teacher], rows, max_batch_tokens):
                s_hidden, t_hidden = batch.hidden
                kl = []
                for s_h, t_h in zip(s_hidden.split(chunk_tokens), t_hidden.split(chunk_tokens), strict=True):
                    z_s = head_logits(s_h, s_head, vocab_rows)
                    z_t = head_logits(t_h, t_head, vocab_rows).to(z_s.device)
                    kl.append(token_divergence(z_s, z_t, None, "reverse_kl").double().cpu())
                keys = [(rows[i].episode, k) for i in batch.rows for k in rows[i].owners]
                for key, v in zip(keys, torch.cat(kl).tolist(), strict=True):
                    sums[key] = sums.get(key, 0.0) + v
                phase.update(len(batch.rows))
            phase.close(f"{len(rows)} sequences, {sum(len(r.positions) for r in rows)} response tokens scored")
    finally:
        for m, was in modes:
            m.train(was)
    for (e, k), v in sums.items():
        out[e][k] = (v, len(episodes[e].turns[k].response_ids))
    return out
