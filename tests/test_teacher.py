"""The teacher's one pass equals a direct, unbatched teacher forward; transcript and window modes agree.

Float64 tiny teachers: batched (padded) and unbatched forwards then agree to ~1e-15 on any CPU."""

import pytest
import torch

from sage.distill.confidence import finish_confidence, teacher_confidence
from sage.distill.teacher import TeacherScorer
from sage.forward import budget_batches, pad_right, predicting, selected_hidden
from sage.models import freeze, load_model
from sage.specs import LoraSpec, ModelSpec
from tests.helpers import make_turn, tiny_model, transcript_episode

TOL = 1e-12


@pytest.fixture(scope="module")
def teacher():
    return freeze(tiny_model(seed=1).double())


def _ids(gen, n):
    return torch.randint(3, 49152, (n,), generator=gen).tolist()


def _turns(seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (3, 9), (12, 1), (5, 4)]  # (context, response) lengths: padding in every direction
    return [make_turn(index=k, context_ids=_ids(gen, c), response_ids=_ids(gen, r)) for k, (c, r) in enumerate(shapes)]


def _direct(model, context, response, vocab_rows=None, temperature=1.0):
    """Unbatched reference: position len(context)+k-1 predicts response token k."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([context + response]), output_hidden_states=True)
    span = slice(len(context) - 1, len(context) + len(response) - 1)
    logits = out.logits[0, span, :vocab_rows]
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp[torch.arange(len(response)), torch.tensor(response)], logits, out.hidden_states[-1][0, span]


@pytest.mark.parametrize(
    "kind,minimum,turn_average,temperature",
    [("max_prob", 0.0, False, 1.0), ("neg_entropy", 0.2, True, 2.0), ("none", 0.0, False, 1.0)],
)
def test_score_turns_matches_direct_forward(teacher, kind, minimum, turn_average, temperature):
    turns = _turns()
    scorer = TeacherScorer(teacher, kind, minimum, turn_average, temperature, max_batch_tokens=40, chunk_tokens=3)
    kept = scorer.score_turns(turns)
    for t, kept_hidden in zip(turns, kept, strict=True):
        logp, logits, hidden = _direct(teacher, t.context_ids, t.response_ids, temperature=temperature)
        torch.testing.assert_close(torch.tensor(t.teacher_logprobs, dtype=torch.float64), logp, rtol=0, atol=TOL)
        kappa = finish_confidence(teacher_confidence(logits, kind, temperature=temperature).double(), minimum, turn_average)
        torch.testing.assert_close(torch.tensor(t.confidence, dtype=torch.float64), kappa, rtol=0, atol=TOL)
        torch.testing.assert_close(kept_hidden, hidden, rtol=0, atol=TOL)
        assert len(t.confidence) == len(t.response_ids) and min(t.confidence) >= minimum


def test_padded_teacher_vocab_is_sliced():
    padded = freeze(tiny_model(seed=2, vocab_size=49152 + 64).double())
    turns = _turns(seed=3)
    TeacherScorer(padded, vocab_rows=49152).score_turns(turns)
    for t in turns:
        logp, _, _ = _direct(padded, t.context_ids, t.response_ids, vocab_rows=49152)
        torch.testing.assert_close(torch.tensor(t.teacher_logprobs, dtype=torch.float64), logp, rtol=0, atol=TOL)


def test_score_episodes_agrees_with_score_turns(teacher):
    gen = torch.Generator().manual_seed(5)
    ep = transcript_episode(_ids(gen, 6), [(_ids(gen, 4), _ids(gen, 3)), (_ids(gen, 2), _ids(gen, 5)), (_ids(gen, 3), [])])
    window = [make_turn(index=t.index, context_ids=ep.sequence_ids[: t.offset], response_ids=t.response_ids) for t in ep.turns]
    w_hidden = TeacherScorer(teacher, "max_prob", turn_average=True).score_turns(window)
    (e_hidden,) = TeacherScorer(teacher, "max_prob", turn_average=True).score_episodes([ep])
    for t, w, th, wh in zip(ep.turns, window, e_hidden, w_hidden, strict=True):
        for a, b in ((t.teacher_logprobs, w.teacher_logprobs), (t.confidence, w.confidence)):
            torch.testing.assert_close(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
                                       rtol=0, atol=TOL)
        torch.testing.assert_close(th, wh, rtol=0, atol=TOL)


def test_hidden_states_are_dropped_when_not_kept(teacher):
    turns = _turns()
    hidden = TeacherScorer(teacher, keep_hidden=False).score_turns(turns)
    assert hidden == [None] * len(turns) and all(len(t.teacher_logprobs) == len(t.response_ids) for t in turns)


def test_scoring_errors(teacher):
    scorer = TeacherScorer(teacher)
    with pytest.raises(ValueError, match="has no context_ids: it was not played in window mode"):
        scorer.score_turns([make_turn(context_ids=[], response_ids=[5])])
    ep = transcript_episode([1, 2, 3], [([4, 5], [6])])
    ep.turns[0].response_ids = [4, 5, 9]
    with pytest.raises(ValueError, match="3 response_ids"):
        scorer.score_episodes([ep])
    empty = make_turn(response_ids=[])
    scorer.score_turns([empty])
    assert empty.teacher_logprobs == [] and empty.confidence == []
    with pytest.raises(ValueError, match="confidence kind='peak'; allowed: max_prob"):
        TeacherScorer(teacher, "peak")


def test_selected_hidden_is_differentiable_for_students():
    spec = ModelSpec("tiny-random", seed=4, lora=LoraSpec(r=2, dropout=0.0), gradient_checkpointing=True)
    student = load_model(spec)
    ids, attn = pad_right([[1, 5, 6, 7], [1, 8]])
    targets = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 0]], dtype=torch.bool)
    hidden = selected_hidden(student, ids, attn, predicting(targets))
    assert hidden.shape == (3, 64)
    hidden.square().sum().backward()
    grads = [p.grad for n, p in student.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None for g in grads)


def test_budget_batches_respects_token_budget():
    lengths = [5, 30, 10, 10, 2]
    batches = budget_batches(lengths, max_tokens=25)
    assert sorted(i for b in batches for i in b) == list(range(5))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 25
    assert all(len(b) <= 2 for b in budget_batches(lengths, 10**9, max_rows=2))
