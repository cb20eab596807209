"""The teacher's one pass over the student's tokens (docs/METHOD.md kappa): per response token its log-prob
log pi_T(y_k | c, y_<k), its confidence kappa_k, and its final hidden state.

`TeacherScorer` asks a `sage.distill.row_teacher.RowTeacher` (today the model in this process,
`LocalTeacher`) to score the episodes' rows (`sage.scoring.episode_rows`: a turn per row in window mode, an
episode per row in transcript mode) and hands each turn the scores at its own tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sage.distill.confidence import finish_confidence
from sage.distill.row_teacher import LocalTeacher, RowTeacher
from sage.rollout.context import context_for
from sage.rollout.records import Episode, Turn
from sage.scoring import EpisodeRow, TeacherHidden, episode_rows


class TeacherScorer:
    """Fills ``Turn.teacher_logprobs`` and ``Turn.confidence`` (logged with the episode) and returns the
    hidden states (when the teacher keeps them), which only the epoch's plan holds, never the turn.

    The arguments build the in-process `LocalTeacher` (``model``: the teacher model; ``temperature``
    applies to log-probs and kappa alike); ``teacher`` replaces it by any `RowTeacher`. ``confidence_min``
    and ``turn_average`` finish each turn's kappa (`finish_confidence`).
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
        teacher: RowTeacher | None = None,
    ):
        self.teacher = teacher or LocalTeacher(model, confidence_kind, temperature, vocab_rows, max_batch_tokens,
                                               keep_hidden, chunk_tokens)
        self.confidence_min = confidence_min
        self.turn_average = turn_average

    def _turn_confidence(self, kappa: list[float]) -> list[float]:
        """One turn's kappa after the turn average and the floor (`finish_confidence`)."""
        if not kappa:
            return []
        return finish_confidence(torch.tensor(kappa, dtype=torch.float64), self.confidence_min, self.turn_average).tolist()

    def score(self, turns: Sequence[Sequence[Turn]], rows: Sequence[EpisodeRow]) -> TeacherHidden:
        """Score ``rows`` (``turns``: each episode's turns, as the rows index them); every turn a row holds
        gets the scores at its tokens. Returns the hidden states per (episode, turn) that has some."""
        hidden: TeacherHidden = {}
        for row, scores in zip(rows, self.teacher.score_rows(rows), strict=True):
            owned: dict[int, list[int]] = {}
            for n, k in enumerate(row.owners):
                owned.setdefault(k, []).append(n)
            for k in row.turns:
                t = turns[row.episode][k]
                idx = owned.get(k, [])
                if len(idx) != len(t.response_ids):
                    raise ValueError(f"episode {t.game_id} turn {k}: {len(idx)} student tokens in the sequence "
                                     f"but {len(t.response_ids)} response_ids")
                t.teacher_logprobs = [scores.logprobs[n] for n in idx]
                t.confidence = self._turn_confidence([scores.kappa[n] for n in idx])
                if scores.hidden is not None and idx:
                    hidden[(row.episode, k)] = scores.hidden[idx[0] : idx[-1] + 1]
        return hidden

    def score_turns(self, turns: Sequence[Turn]) -> list[Tensor | None]:
        """Window-mode turns, one row each (context_ids + response_ids). Returns each turn's hidden states."""
        window = context_for("window")
        hidden = self.score([[t] for t in turns], [window.turn_row(t, i, 0) for i, t in enumerate(turns)])
        return [hidden.get((i, 0)) for i in range(len(turns))]

    def score_episodes(self, episodes: Sequence[Episode]) -> list[list[Tensor | None]]:
        """Transcript-mode episodes, one row each. Returns, per episode, each turn's hidden states."""
        hidden = self.score([ep.turns for ep in episodes], episode_rows(episodes, context_for("transcript")))
        return [[hidden.get((e, k)) for k in range(len(ep.turns))] for e, ep in enumerate(episodes)]
