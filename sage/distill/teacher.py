"""Teacher scoring of the student's tokens: log pi_T(y_k | c, y_<k) and confidence kappa_k per response token.

Forwards are batched under a token budget with right padding (no position-id bookkeeping, no fully
masked rows), and the LM head only runs from the first scored position on (``logits_to_keep``): with
a 150k vocabulary, logits over a long context would cost far more memory than the forward itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sage.distill.confidence import teacher_confidence
from sage.rollout.records import Episode, Turn


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def budget_batches(lengths: Sequence[int], max_tokens: int, max_rows: int | None = None) -> list[list[int]]:
    """Indices grouped longest-first so that rows x longest length <= max_tokens (a longer row goes alone).

    Sorting by length also keeps the rows of a batch alike, so padding and kept logits stay small."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    for i in order:
        cur = batches[-1] if batches else None
        if cur is None or (len(cur) + 1) * lengths[cur[0]] > max_tokens or (max_rows and len(cur) >= max_rows):
            batches.append([i])
        else:
            cur.append(i)
    return batches


def pad_batch(
    seqs: Sequence[Sequence[int]], positions: Sequence[Sequence[int]], device=None, pad_id: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded ``input_ids``/``attention_mask`` ``[B, S]`` and target ``positions`` ``[B, N]`` (0 = none)."""
    width = max(len(s) for s in seqs)
    n = max((len(p) for p in positions), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    pos = torch.zeros((len(seqs), max(n, 1)), dtype=torch.long)
    for i, (s, p) in enumerate(zip(seqs, positions, strict=True)):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        attn[i, : len(s)] = 1
        if len(p):
            pos[i, : len(p)] = torch.tensor(list(p), dtype=torch.long)
    return ids.to(device), attn.to(device), pos.to(device)


def response_logits(model, input_ids: Tensor, attention_mask: Tensor, positions: Tensor, vocab_rows: int | None = None):
    """Logits ``[B, N, V]`` where entry (b, n) predicts the token at ``positions[b, n]`` (it comes from
    position - 1). Entries with position < 1 are padding and hold arbitrary values. Differentiable:
    training can use it for the student too. ``vocab_rows`` keeps only the first V logit columns."""
    valid = positions >= 1
    src = (positions - 1).clamp(min=0)
    seq_len = input_ids.shape[1]
    start = int(src[valid].min()) if bool(valid.any()) else seq_len - 1
    if bool(valid.any()) and int(src[valid].max()) >= seq_len:
        raise ValueError("a target position is more than one past the end of its sequence")
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=seq_len - start)
    logits = out.logits
    if vocab_rows is not None:
        logits = logits[..., :vocab_rows]
    rel = torch.where(valid, src - start, torch.zeros_like(src))
    rows = torch.arange(input_ids.shape[0], device=input_ids.device).unsqueeze(-1)
    return logits[rows, rel]


def token_logprobs(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / T)[target] in float32, without materializing the full log-softmax."""
    z = logits.float() / temperature
    if targets.numel() and int(targets.max()) >= z.shape[-1]:
        raise ValueError(f"a target token id is >= the {z.shape[-1]} scored vocabulary rows")
    return z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1)


class TeacherScorer:
    """Fills ``Turn.teacher_logprobs`` and ``Turn.confidence`` (METHOD.md kappa) with a frozen teacher.

    ``vocab_rows``: logit columns shared with the student (see `sage.models.check_tokenizers`); both
    the log-probs and kappa are computed over those columns only. ``temperature`` applies to both.
    """

    def __init__(
        self,
        model,
        confidence_kind: str = "max_prob",
        confidence_min: float = 0.0,
        turn_average: bool = False,
        temperature: float = 1.0,
        vocab_rows: int | None = None,
        max_batch_tokens: int = 8192,
    ):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.model = model
        self.confidence_kind = confidence_kind
        self.confidence_min = confidence_min
        self.turn_average = turn_average
        self.temperature = temperature
        self.vocab_rows = vocab_rows
        self.max_batch_tokens = max_batch_tokens

    @torch.no_grad()
    def _score(self, seqs, positions, turn_ids=None) -> list[tuple[list[float], list[float]]]:
        """For each sequence: (log-probs, kappa) of the tokens at its positions (predicted from pos - 1)."""
        results: list = [None] * len(seqs)
        device = model_device(self.model)
        for batch in budget_batches([len(s) for s in seqs], self.max_batch_tokens):
            ids, attn, pos = pad_batch([seqs[i] for i in batch], [positions[i] for i in batch], device)
            valid = pos >= 1
            logits = response_logits(self.model, ids, attn, pos, self.vocab_rows)
            targets = ids.gather(1, pos.clamp(max=ids.shape[1] - 1)) * valid
            logp = token_logprobs(logits, targets, self.temperature)
            tids = None
            if turn_ids is not None:
                tids = torch.full_like(pos, -1)
                for r, i in enumerate(batch):
                    tids[r, : len(turn_ids[i])] = torch.tensor(turn_ids[i], dtype=torch.long)
            kappa = teacher_confidence(
                logits, self.confidence_kind, self.confidence_min, self.turn_average,
                mask=valid, turn_ids=tids, temperature=self.temperature,
            )
            logp, kappa = logp.cpu(), kappa.cpu()
            for r, i in enumerate(batch):
                n = len(positions[i])
                results[i] = (logp[r, :n].tolist(), kappa[r, :n].float().tolist())
        return results

    def score_turns(self, turns: Sequence[Turn]) -> None:
        """Window mode: one row per turn, context_ids + response_ids."""
        for t in turns:
            if not t.response_ids:
                t.teacher_logprobs, t.confidence = [], []
        turns = [t for t in turns if t.response_ids]
        for t in turns:
            if not t.context_ids:
                raise ValueError(
                    f"turn {t.step} of {t.game_id} has no context_ids (transcript mode?): use score_episodes"
                )
        seqs = [list(t.context_ids) + list(t.response_ids) for t in turns]
        positions = [range(len(t.context_ids), len(s)) for t, s in zip(turns, seqs, strict=True)]
        for t, (logp, kappa) in zip(turns, self._score(seqs, positions), strict=True):
            t.teacher_logprobs, t.confidence = logp, kappa

    def score_episodes(self, episodes: Sequence[Episode]) -> None:
        """Transcript mode: one row per episode sequence; each turn gets the scores at its own tokens."""
        eps = [e for e in episodes if e.turns and e.sequence_ids]
        seqs, positions, turn_ids = [], [], []
        for e in eps:
            if e.student_mask is None or e.turn_index is None:
                raise ValueError(f"episode {e.game_id} has sequence_ids but no student_mask/turn_index")
            pos = [j for j, m in enumerate(e.student_mask) if m]
            if pos and pos[0] < 1:
                raise ValueError(f"episode {e.game_id}: a student token at position 0 has no context")
            seqs.append(e.sequence_ids)
            positions.append(pos)
            turn_ids.append([e.turn_index[j] for j in pos])
        for e, tids, (logp, kappa) in zip(eps, turn_ids, self._score(seqs, positions, turn_ids), strict=True):
            for k, t in enumerate(e.turns):
                idx = [n for n, tid in enumerate(tids) if tid == k]
                if len(idx) != len(t.response_ids):
                    raise ValueError(
                        f"episode {e.game_id} turn {k}: {len(idx)} student tokens in the sequence "
                        f"but {len(t.response_ids)} response_ids"
                    )
                t.teacher_logprobs = [logp[n] for n in idx]
                t.confidence = [kappa[n] for n in idx]

    def score(self, episodes: Sequence[Episode]) -> None:
        """Score every turn: transcript episodes (with ``sequence_ids``) as sequences, others turn by turn."""
        self.score_episodes([e for e in episodes if e.sequence_ids is not None])
        self.score_turns([t for e in episodes if e.sequence_ids is None for t in e.turns])
