"""The teacher's one pass over the student's tokens (docs/METHOD.md kappa): per response token its log-prob
log pi_T(y_k | c, y_<k), its confidence kappa_k, and its final hidden state.

The hidden state is what the training loss needs from the teacher: the step recomputes the teacher's
fp32 logits from it in chunks (`sage.distill.fused`), so the teacher decoder runs once per trained
token, here, instead of again in every training micro-batch. Kept on the host (bf16 under bf16
autocast: hidden size x 2 bytes per token, ~1/40 of the logits it stands for at a 150k vocabulary).

Forwards are batched under a token budget with right padding and no KV cache; the LM head runs in
float32 on the scored positions only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sage.distill.confidence import finish_confidence
from sage.distill.fused import teacher_token_stats
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
from sage.rollout.records import Episode, Turn
from sage.specs import CONFIDENCE_KINDS, check_choice, check_temperature


class TeacherScorer:
    """Fills ``Turn.teacher_logprobs`` and ``Turn.confidence`` (logged with the episode) and returns the
    hidden states (``keep_hidden``; None otherwise), which only the epoch's plan holds, never the turn.

    ``vocab_rows``: logit columns shared with the student (see `sage.models.shared_vocab_rows`); log-probs
    and kappa use those columns only. ``temperature`` applies to both.
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
        keep_hidden: bool = True,
        chunk_tokens: int = 1024,
    ):
        check_temperature(temperature)
        check_choice("confidence kind", confidence_kind, CONFIDENCE_KINDS)
        self.model = model
        self.confidence_kind = confidence_kind
        self.confidence_min = confidence_min
        self.turn_average = turn_average
        self.temperature = temperature
        self.vocab_rows = vocab_rows
        self.max_batch_tokens = max_batch_tokens
        self.keep_hidden = keep_hidden
        self.chunk_tokens = chunk_tokens

    @torch.no_grad()
    def _score(self, seqs, positions) -> list[tuple[list[float], list[float], Tensor]]:
        """For each sequence: (log-probs, raw kappa, hidden [n, H]) of the tokens at its positions (each
        predicted from the position before it; positions increase within a sequence)."""
        results: list = [None] * len(seqs)
        if not seqs:
            return results
        device = model_device(self.model)
        head = output_head(self.model)
        phase = Phase("teacher", total=len(seqs), unit="seq")
        for batch in budget_batches([len(s) for s in seqs], self.max_batch_tokens):
            ids, attn = pad_right([seqs[i] for i in batch], device=device)
            targets = position_mask(ids, [positions[i] for i in batch])
            hidden = selected_hidden(self.model, ids, attn, predicting(targets))
            kappa, logp = teacher_token_stats(
                hidden, head, ids[targets], self.vocab_rows, self.temperature, self.confidence_kind, self.chunk_tokens
            )
            kappa, logp = kappa.cpu().tolist(), logp.cpu().tolist()
            hidden = hidden.cpu() if self.keep_hidden else None
            start = 0
            for i in batch:
                n = len(positions[i])
                h = hidden[start : start + n] if hidden is not None else None
                results[i] = (logp[start : start + n], kappa[start : start + n], h)
                start += n
            phase.update(len(batch))
        scored = sum(len(p) for p in positions)
        phase.close(f"{len(seqs)} sequences, {scored} response tokens scored ({scored / max(phase.seconds, 1e-9):.0f}/s)")
        return results

    def _turn_confidence(self, kappa: list[float]) -> list[float]:
        """One turn's kappa after the turn average and the floor (`finish_confidence`)."""
        if not kappa:
            return []
        return finish_confidence(torch.tensor(kappa, dtype=torch.float64), self.confidence_min, self.turn_average).tolist()

    def score_turns(self, turns: Sequence[Turn]) -> list[Tensor | None]:
        """Window mode: one row per turn, context_ids + response_ids. Returns each turn's hidden states."""
        hidden_of: dict[int, Tensor | None] = {}
        for t in turns:
            if not t.response_ids:
                t.teacher_logprobs, t.confidence = [], []
        all_turns, turns = turns, [t for t in turns if t.response_ids]
        for t in turns:
            if not t.context_ids:
                raise ValueError(
                    f"turn {t.index} of {t.game_id} has no context_ids (transcript mode?): use score_episodes"
                )
        seqs = [list(t.context_ids) + list(t.response_ids) for t in turns]
        positions = [range(len(t.context_ids), len(s)) for t, s in zip(turns, seqs, strict=True)]
        for t, (logp, kappa, hidden) in zip(turns, self._score(seqs, positions), strict=True):
            t.teacher_logprobs = logp
            t.confidence = self._turn_confidence(kappa)
            hidden_of[id(t)] = hidden
        return [hidden_of.get(id(t)) for t in all_turns]

    def score_episodes(self, episodes: Sequence[Episode]) -> list[list[Tensor | None]]:
        """Transcript mode: one row per episode sequence; each turn gets the scores at its own tokens.
        Returns, per episode, each turn's hidden states."""
        out = [[None] * len(e.turns) for e in episodes]
        index = {id(e): i for i, e in enumerate(episodes)}
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
        for e, tids, (logp, kappa, hidden) in zip(eps, turn_ids, self._score(seqs, positions), strict=True):
            for k, t in enumerate(e.turns):
                idx = [n for n, tid in enumerate(tids) if tid == k]
                if len(idx) != len(t.response_ids):
                    raise ValueError(
                        f"episode {e.game_id} turn {k}: {len(idx)} student tokens in the sequence "
                        f"but {len(t.response_ids)} response_ids"
                    )
                t.teacher_logprobs = [logp[n] for n in idx]
                t.confidence = self._turn_confidence([kappa[n] for n in idx])
                out[index[id(e)]][k] = hidden[idx[0] : idx[-1] + 1] if hidden is not None and idx else None
        return out
