"""Teacher scoring equals a direct, unbatched teacher forward; transcript and window modes agree."""

import pytest
import torch
from helpers import assert_float32_close, make_episode, make_turn, tiny_model, transcript_episode

from sage.distill.confidence import teacher_confidence
from sage.distill.teacher import TeacherScorer, budget_batches, pad_batch, response_logits
from sage.models import LoraSpec, ModelSpec, freeze, load_model


@pytest.fixture(scope="module")
def teacher():
    """float64: batched scoring (padding, token budgets, one transcript row) and the direct forward are
    the same math over different shapes. The scorer stores log-probs and kappa in float32 by design, so
    those are compared at float32 resolution against a float64 reference."""
    return freeze(tiny_model(seed=1, dtype=torch.float64))


def _ids(gen, n):
    return torch.randint(3, 49152, (n,), generator=gen).tolist()


def _turns(seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (3, 9), (12, 1), (5, 4)]  # (context, response) lengths: padding in every direction
    return [make_turn(step=k, context_ids=_ids(gen, c), response_ids=_ids(gen, r)) for k, (c, r) in enumerate(shapes)]


def _direct(model, context, response, vocab_rows=None, temperature=1.0):
    """Unbatched reference: logits at positions len(context)+k-1 predict response token k."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([context + response])).logits[0]
    logits = logits[len(context) - 1 : len(context) + len(response) - 1, :vocab_rows]
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp[torch.arange(len(response)), torch.tensor(response)], logits


@pytest.mark.parametrize(
    "kind,minimum,turn_average,temperature",
    [("max_prob", 0.0, False, 1.0), ("neg_entropy", 0.2, True, 2.0)],
)
def test_score_turns_matches_direct_forward(teacher, kind, minimum, turn_average, temperature):
    turns = _turns()
    scorer = TeacherScorer(teacher, kind, minimum, turn_average, temperature, max_batch_tokens=40)
    scorer.score_turns(turns)
    for t in turns:
        logp, logits = _direct(teacher, t.context_ids, t.response_ids, temperature=temperature)
        assert_float32_close(t.teacher_logprobs, logp)
        kappa = teacher_confidence(logits[None], kind, minimum, turn_average, temperature=temperature)[0]
        assert kappa.dtype == torch.float64
        assert_float32_close(t.confidence, kappa)
        assert len(t.confidence) == len(t.response_ids) and min(t.confidence) >= minimum


def test_padded_teacher_vocab_is_sliced():
    padded = freeze(tiny_model(seed=2, vocab_size=49152 + 64, dtype=torch.float64))
    turns = _turns(seed=3)
    TeacherScorer(padded, vocab_rows=49152).score_turns(turns)
    for t in turns:
        logp, _ = _direct(padded, t.context_ids, t.response_ids, vocab_rows=49152)
        assert_float32_close(t.teacher_logprobs, logp)


def test_score_episodes_agrees_with_score_turns(teacher):
    gen = torch.Generator().manual_seed(5)
    ep = transcript_episode(_ids(gen, 6), [(_ids(gen, 4), _ids(gen, 3)), (_ids(gen, 2), _ids(gen, 5)), (_ids(gen, 3), [])])
    window = [make_turn(step=t.step, context_ids=ep.sequence_ids[: t.offset], response_ids=t.response_ids) for t in ep.turns]
    TeacherScorer(teacher, "max_prob", turn_average=True).score_turns(window)
    scorer = TeacherScorer(teacher, "max_prob", turn_average=True)
    plain = make_episode([make_turn(step=0, context_ids=[1, 4], response_ids=[7, 8])])
    scorer.score([ep, plain])  # dispatches: transcript episode as one sequence, the other per turn
    for t, w in zip(ep.turns, window, strict=True):
        assert_float32_close(t.teacher_logprobs, w.teacher_logprobs, both_float32=True)
        assert_float32_close(t.confidence, w.confidence, both_float32=True)
    assert len(plain.turns[0].teacher_logprobs) == 2


def test_scoring_errors(teacher):
    scorer = TeacherScorer(teacher)
    with pytest.raises(ValueError, match="score_episodes"):
        scorer.score_turns([make_turn(context_ids=[], response_ids=[5])])
    ep = transcript_episode([1, 2, 3], [([4, 5], [6])])
    ep.turns[0].response_ids = [4, 5, 9]
    with pytest.raises(ValueError, match="3 response_ids"):
        scorer.score_episodes([ep])
    empty = make_turn(response_ids=[])
    scorer.score_turns([empty])
    assert empty.teacher_logprobs == [] and empty.confidence == []


def test_response_logits_is_differentiable_for_students():
    spec = ModelSpec("tiny-random", seed=4, lora=LoraSpec(r=2, dropout=0.0), gradient_checkpointing=True)
    student = load_model(spec)
    ids, attn, pos = pad_batch([[1, 5, 6, 7], [1, 8]], [[2, 3], [1]])
    out = response_logits(student, ids, attn, pos)
    assert out.shape == (2, 2, 49152)
    out[pos >= 1].logsumexp(-1).sum().backward()
    grads = [p.grad for n, p in student.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None for g in grads)


def test_budget_batches_respects_token_budget():
    lengths = [5, 30, 10, 10, 2]
    batches = budget_batches(lengths, max_tokens=25)
    assert sorted(i for b in batches for i in b) == list(range(5))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 25
    assert all(len(b) <= 2 for b in budget_batches(lengths, 10**9, max_rows=2))
