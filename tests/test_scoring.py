"""One row builder and one scoring loop (`sage.scoring`), with the context mode decided once
(`sage.rollout.context`).

- The row builder lays episodes out as the three copies it replaced did (training samples, teacher
  scoring, evaluation KL), in window and transcript mode, compared with those copies kept here verbatim.
- Every decoder forward of the teacher scoring, the evaluation KL and the judge goes through
  `sage.scoring.scored_batches`; the samples, the teacher scoring and the evaluation KL read their rows
  from the context object.
- Rows score what a plain, unbatched forward gives, in float64.
"""

from __future__ import annotations

import pytest
import torch

import sage.scoring
from sage.distill.annotate import Annotator
from sage.distill.eval_kl import turn_kl
from sage.distill.gate import make_gate
from sage.distill.judge import TeacherJudge
from sage.distill.objective import token_weights
from sage.distill.teacher import TeacherScorer
from sage.rollout.context import TranscriptContext, WindowContext, context_for, recorded_context
from sage.samples import episode_samples, transcript_samples, window_samples
from sage.scoring import Row, episode_rows, scored_batches
from sage.specs import GateSpec
from tests.helpers import (
    assert_equal_up_to_float64_rounding,
    make_episode,
    make_turn,
    tiny_model,
    tiny_tokenizer,
    transcript_episode,
)

H = 4  # width of the made-up teacher hidden states


# -- the copies the row builder replaced (as they were before it), the reference ----------------------
def old_window_samples(episodes, hidden):
    out = []
    for e, ep in enumerate(episodes):
        for k, t in enumerate(ep.turns):
            n, c = len(t.response_ids), len(t.context_ids)
            conf = list(t.confidence) if t.confidence is not None else [1.0] * n
            tlp = list(t.teacher_logprobs) if t.teacher_logprobs is not None else [0.0] * n
            h = hidden.get((e, k))
            out.append((list(t.context_ids) + list(t.response_ids), [0] * c + [1] * n,
                        [0.0] * c + [float(t.gate) * t.weight] * n, [1.0] * c + conf, [0.0] * c + tlp, h))
    return out


def old_transcript_samples(episodes, hidden):
    out = []
    for e, ep in enumerate(episodes):
        n = len(ep.sequence_ids)
        gate, conf, tlp = [0.0] * n, [1.0] * n, [0.0] * n
        for t in ep.turns:
            c = list(t.confidence) if t.confidence is not None else [1.0] * len(t.response_ids)
            lp = list(t.teacher_logprobs) if t.teacher_logprobs is not None else [0.0] * len(t.response_ids)
            for k in range(len(t.response_ids)):
                gate[t.offset + k] = float(t.gate) * t.weight
                conf[t.offset + k] = c[k]
                tlp[t.offset + k] = lp[k]
        order = sorted((k for k, t in enumerate(ep.turns) if t.response_ids), key=lambda k: ep.turns[k].offset)
        parts = [hidden.get((e, k)) for k in order]
        rows = None
        if any(p is not None for p in parts):
            rows = torch.cat([p if p is not None else torch.zeros(len(ep.turns[k].response_ids), H, dtype=torch.float64)
                              for k, p in zip(order, parts, strict=True)])
        out.append((list(ep.sequence_ids), list(ep.student_mask), gate, conf, tlp, rows))
    return out


def old_eval_rows(episodes):
    seqs, positions, owners = [], [], []
    for e, ep in enumerate(episodes):
        if ep.sequence_ids is not None:
            spans = []
            for k, t in enumerate(ep.turns):
                spans += [(t.offset + j, (e, k)) for j in range(len(t.response_ids))]
            if spans:
                spans.sort()
                seqs.append(list(ep.sequence_ids))
                positions.append([p for p, _ in spans])
                owners.append([o for _, o in spans])
            continue
        for k, t in enumerate(ep.turns):
            n, c = len(t.response_ids), len(t.context_ids)
            if n:
                seqs.append(list(t.context_ids) + list(t.response_ids))
                positions.append(list(range(c, c + n)))
                owners.append([(e, k)] * n)
    return seqs, positions, owners


# -- episodes ---------------------------------------------------------------------------------------
def _ids(gen, n):
    return torch.randint(3, 49152, (n,), generator=gen).tolist()


def _annotated(turns, gen):
    """Gates, weights, kappa and teacher log-probs on the turns, some left unscored (None)."""
    for k, t in enumerate(turns):
        t.gate, t.weight = [1.0, 0.0, 0.5, 1.0][k % 4], [1.0, 1.0, 2.0, 0.25][k % 4]
        if k % 3 != 1:
            n = len(t.response_ids)
            t.confidence = torch.rand(n, generator=gen, dtype=torch.float64).tolist()
            t.teacher_logprobs = (-torch.rand(n, generator=gen, dtype=torch.float64) * 5).tolist()


def transcript_episodes(seed=0):
    """Played whole, with an empty answer, an episode that ended before its first turn, and one whose
    second turn is wholly unmarked (the teacher recipe trains only the expert's turns)."""
    gen = torch.Generator().manual_seed(seed)
    a = transcript_episode(_ids(gen, 6), [(_ids(gen, 4), _ids(gen, 3)), (_ids(gen, 2), _ids(gen, 5)), ([], _ids(gen, 2)),
                                          (_ids(gen, 3), [])], game_id="a")
    b = transcript_episode(_ids(gen, 9), [], game_id="b")
    c = transcript_episode(_ids(gen, 3), [(_ids(gen, 2), _ids(gen, 2)), (_ids(gen, 5), _ids(gen, 1)),
                                          (_ids(gen, 1), [])], game_id="c")
    t = c.turns[1]
    for j in range(t.offset, t.offset + len(t.response_ids)):
        c.student_mask[j], c.turn_index[j] = 0, -1
    episodes = [a, b, c]
    for ep in episodes:
        _annotated(ep.turns, gen)
    return episodes


def window_episodes(seed=1):
    """The transcript episodes' turns as window turns (context = the sequence before the answer), plus an
    episode with no turns."""
    out = []
    for ep in transcript_episodes(seed)[:1] + [make_episode([], game_id="empty")] + transcript_episodes(seed)[2:]:
        turns = [make_turn(index=t.index, context_ids=ep.sequence_ids[: t.offset], response_ids=t.response_ids,
                           gate=t.gate, weight=t.weight, confidence=t.confidence, teacher_logprobs=t.teacher_logprobs)
                 for t in ep.turns]
        out.append(make_episode(turns, game_id=ep.game_id))
    return out


def made_up_hidden(episodes, gen):
    """(episode, turn) -> float64 states for every other scored turn (none in an episode with unmarked
    turns: the teacher recipe that unmarks them trains by SFT, and the old builder refused states there)."""
    marked = [ep.student_mask is None or sum(ep.student_mask) == sum(len(t.response_ids) for t in ep.turns)
              for ep in episodes]
    return {(e, k): torch.randn(len(t.response_ids), H, generator=gen, dtype=torch.float64)
            for e, ep in enumerate(episodes) for k, t in enumerate(ep.turns)
            if t.response_ids and (e + k) % 2 == 0 and marked[e]}


# -- the row builder ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["window", "transcript"])
def test_samples_are_the_rows_the_old_builders_made(mode):
    episodes = window_episodes() if mode == "window" else transcript_episodes()
    hidden = made_up_hidden(episodes, torch.Generator().manual_seed(7))
    old = (old_window_samples if mode == "window" else old_transcript_samples)(episodes, hidden)
    new = episode_samples(episodes, context_for(mode), hidden)
    assert len(new) == len(old)
    assert episode_samples(episodes, context_for(mode)) == (window_samples if mode == "window" else transcript_samples)(episodes)
    for s, (ids, mask, gate, conf, tlp, h) in zip(new, old, strict=True):
        assert (s.input_ids, s.loss_mask) == (ids, mask)
        on = [j for j, m in enumerate(mask) if m]
        for got, ref in ((s.gate, gate), (s.confidence, conf), (s.teacher_logprobs, tlp)):
            assert [got[j] for j in on] == [ref[j] for j in on]
        # off the mask only a wholly unmarked turn's tokens differ, and there the weight is 0 either way
        t = torch.tensor
        w_new = token_weights(t(s.loss_mask, dtype=torch.float64), t(s.gate, dtype=torch.float64), t(s.confidence, dtype=torch.float64))
        w_old = token_weights(t(mask, dtype=torch.float64), t(gate, dtype=torch.float64), t(conf, dtype=torch.float64))
        assert torch.equal(w_new, w_old)
        if mode == "window":
            assert (s.gate, s.confidence, s.teacher_logprobs) == (gate, conf, tlp)
        assert (s.teacher_hidden is None) == (h is None)
        if h is not None:
            assert s.teacher_hidden.dtype == torch.float64 and torch.equal(s.teacher_hidden, h)


@pytest.mark.parametrize("mode", ["window", "transcript"])
def test_scored_rows_are_the_evaluation_rows_of_before(mode):
    episodes = window_episodes() if mode == "window" else transcript_episodes()[:2]  # eval episodes: all marked
    rows = [r for r in episode_rows(episodes, recorded_context(episodes)) if r.positions]
    seqs, positions, owners = old_eval_rows(episodes)
    assert [r.ids for r in rows] == seqs and [r.positions for r in rows] == positions
    assert [[(r.episode, k) for k in r.owners] for r in rows] == owners
    assert recorded_context(episodes) is context_for(mode)


def test_a_window_turn_and_its_transcript_tokens_are_the_same_scored_tokens():
    (w, _, _), (t, _, _) = window_episodes(), transcript_episodes(1)
    w_rows, (t_row,) = context_for("window").rows(w, 0), context_for("transcript").rows(t, 0)
    for k, first, end in t_row.spans():
        (row,) = [r for r in w_rows if r.turns == (k,)]
        assert row.ids == t_row.ids[: t_row.positions[end - 1] + 1]
        assert row.positions == t_row.positions[first:end] and row.owners == t_row.owners[first:end]


def test_rows_refuse_records_of_the_other_mode_and_misplaced_answers():
    (w, _, _), (t, _, _) = window_episodes(), transcript_episodes()
    with pytest.raises(ValueError, match="has no context_ids: it was not played in window mode"):
        context_for("window").rows(t, 0)
    with pytest.raises(ValueError, match="has no sequence_ids: it was not played in transcript mode"):
        context_for("transcript").rows(w, 0)
    t.turns[1].offset += 1
    with pytest.raises(ValueError, match="turn 1: 2 student tokens from position .* but 2 response_ids at offset"):
        context_for("transcript").rows(t, 0)
    with pytest.raises(ValueError, match="outside"):
        Row([1, 2], [0])


def test_the_context_is_chosen_once_from_the_config():
    assert isinstance(context_for("window"), WindowContext) and isinstance(context_for("transcript"), TranscriptContext)
    assert context_for(True) is context_for("transcript") and context_for(False) is context_for("window")
    assert context_for(context_for("window")) is context_for("window")


# -- the scoring loop --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models():
    return tiny_model(seed=0, dtype=torch.float64), tiny_model(seed=1, dtype=torch.float64)


class Forwards:
    """Counts every decoder forward of the models, and those made by the scoring loop."""

    def __init__(self, monkeypatch, models):
        self.decoder, self.loop = 0, 0
        self.handles = [m.get_decoder().register_forward_pre_hook(self._hook) for m in models]
        real = sage.scoring.selected_hidden

        def counted(*a, **k):
            self.loop += 1
            return real(*a, **k)

        monkeypatch.setattr(sage.scoring, "selected_hidden", counted)

    def _hook(self, module, args):
        self.decoder += 1

    def close(self):
        for h in self.handles:
            h.remove()


class RowReads:
    """Counts the contexts' answers to "how does this episode become rows"."""

    def __init__(self, monkeypatch):
        self.calls = 0
        for cls in (WindowContext, TranscriptContext):
            real = cls.rows

            def counted(ctx, episode, index, real=real):
                self.calls += 1
                return real(ctx, episode, index)

            monkeypatch.setattr(cls, "rows", counted)


def _played_window(models):
    """Window episodes with short contexts the tiny models forward quickly."""
    gen = torch.Generator().manual_seed(3)
    return [make_episode([make_turn(index=k, context_ids=_ids(gen, c), response_ids=_ids(gen, r))
                          for k, (c, r) in enumerate(shapes)], game_id=f"w{i}")
            for i, shapes in enumerate([[(5, 3), (8, 2)], [(4, 4)]])]


@pytest.mark.parametrize("mode", ["window", "transcript"])
def test_the_four_users_go_through_the_one_loop_and_the_context(monkeypatch, models, mode):
    student, teacher = models
    forwards, reads = Forwards(monkeypatch, models), RowReads(monkeypatch)
    try:
        episodes = _played_window(models) if mode == "window" else transcript_episodes(2)[:1]
        context = context_for(mode)
        # the teacher's scoring (through the annotator), with the gate that scores every turn
        annotate = Annotator(make_gate(GateSpec(mode="always"), None, None, None), TeacherScorer(teacher, max_batch_tokens=30))
        hidden = annotate(episodes, context).teacher_hidden
        assert forwards.loop == forwards.decoder > 0 and reads.calls == len(episodes)
        # the samples
        samples = episode_samples(episodes, context, hidden)
        assert reads.calls == 2 * len(episodes)
        assert len(samples) == (sum(ep.length for ep in episodes) if mode == "window" else len(episodes))
        assert sum(s.n_response for s in samples) == sum(len(t.response_ids) for ep in episodes for t in ep.turns)
        # the evaluation KL
        before = forwards.loop
        turn_kl(student, teacher, episodes, max_batch_tokens=30, context=context)
        assert forwards.loop == forwards.decoder > before and reads.calls == 3 * len(episodes)
        # the judge, both ways of scoring its labels
        for scoring in ("first_token", "full"):
            judge = TeacherJudge(GateSpec(scoring=scoring, max_batch=2), teacher, tiny_tokenizer())
            before = forwards.loop
            judge.label_logprobs([[1, 5, 9], [1, 7], [1, 8, 8, 8]], [[10, 11], [12], [13, 14]])
            assert forwards.loop == forwards.decoder > before
    finally:
        forwards.close()


def _direct_logp(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)


def test_rows_score_what_a_plain_forward_gives_in_float64(models):
    """Batched, right-padded rows (one past the end included) against unbatched full forwards."""
    model = models[1]
    rows = [Row([1, 5, 9, 4], [2, 3, 4]), Row([1, 7], [1]), Row([1, 8, 8, 8, 6, 2], [5, 6]), Row([3, 3], [])]
    head = model.get_output_embeddings()
    for budget, max_rows in ((1, None), (10**6, None), (10**6, 2)):
        seen = []
        for batch in scored_batches([model], rows, budget, max_rows):
            (hidden,) = batch.hidden
            logp = torch.log_softmax(head(hidden).double(), -1)
            start = 0
            for i, n in zip(batch.rows, batch.counts, strict=True):
                ref = _direct_logp(model, rows[i].ids)[[p - 1 for p in rows[i].positions]]
                assert_equal_up_to_float64_rounding(logp[start : start + n], ref)
                targets = [rows[i].ids[p] if p < len(rows[i].ids) else -1 for p in rows[i].positions]
                assert batch.targets[start : start + n].tolist() == targets
                start += n
            seen += batch.rows
        assert sorted(seen) == [0, 1, 2]  # the row with nothing to score is never forwarded


def test_the_judge_reads_the_next_token_after_its_prompt(models):
    """First-token scoring scores one past each prompt; full scoring sums the label's tokens."""
    model = models[1]
    prompts, labels = [[1, 5, 9], [1, 7]], [[10, 11], [12], [13, 14]]
    judge = TeacherJudge(GateSpec(scoring="first_token"), model, tiny_tokenizer())
    got = judge.label_logprobs(prompts, labels)
    ref = torch.stack([_direct_logp(model, p)[-1, [ids[0] for ids in labels]] for p in prompts])
    assert_equal_up_to_float64_rounding(got, ref)
    judge = TeacherJudge(GateSpec(scoring="full"), model, tiny_tokenizer())
    got = judge.label_logprobs(prompts, labels)
    ref = torch.tensor([[float(sum(_direct_logp(model, p + ids)[len(p) - 1 + j, y] for j, y in enumerate(ids)))
                         for ids in labels] for p in prompts], dtype=torch.float64)
    assert_equal_up_to_float64_rounding(got, ref)
