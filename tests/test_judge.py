"""Turn gate: the teacher judge reads the label the teacher prefers; always / feedback_rule are exact."""

import pytest
import torch

from sage.distill.gate import GATES, make_gate
from sage.distill.judge import JudgeLabelError, TeacherJudge
from sage.distill.judge_prompt import JudgePrompt
from sage.specs import GATE_MODES, GateSpec
from tests.helpers import biased_model, char_tokenizer, float32_tol, make_episode, make_turn, tiny_tokenizer

THREE = ("SKIP", "WEAK", "STRONG")
TWO = ("SKIP", "INTERVENE")
# A short prompt keeps the forwards cheap; the default prompt's content is tested on its own.
SHORT = JudgePrompt(system="Judge the turn.", user="{task}\n{history}\n{response}\n{feedback}\n{label_list}?")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _episodes():
    a = make_episode([
        make_turn(index=0, action="go to desk 1", feedback="On the desk 1, you see a mug 1."),
        make_turn(index=1, action="take mug 1 from desk 1", feedback="You pick up the mug 1 from the desk 1."),
        make_turn(index=2, action="take mug 1 from desk 1", feedback="Nothing happens."),
        make_turn(index=3, action="", valid_format=False, feedback="Nothing happens.", done=True),
    ])
    b = make_episode([make_turn(index=0, action="look", feedback="You are in the middle of a room.")],
                     game_id="g1", task="look at the bowl under the desklamp.")
    return [a, b]


@pytest.fixture(scope="module")
def biased():
    """One tiny teacher with a biased LM head; tests set the bias of the label tokens they want."""
    return biased_model({})


def _set_bias(model, ids):
    with torch.no_grad():
        model.lm_head.bias.zero_()
        model.lm_head.bias[list(ids)] = 30.0
    return model


def _label_ids(tok, labels, model):
    judge = TeacherJudge(GateSpec(labels=labels), model, tok, SHORT)
    return judge.label_token_ids(judge.prompt_text(_episodes()[0], 0))


@pytest.mark.parametrize("labels", [THREE, TWO])
def test_judge_picks_the_label_the_teacher_prefers(tok, biased, labels):
    label_ids = _label_ids(tok, labels, biased)
    weights = {"SKIP": 0.0, "WEAK": 0.5, "STRONG": 1.0, "INTERVENE": 1.0}
    for target, ids in zip(labels, label_ids, strict=True):
        model = _set_bias(biased, ids)
        for scoring in ("first_token", "full"):
            eps = _episodes()
            TeacherJudge(GateSpec(labels=labels, scoring=scoring, max_batch=3), model, tok, SHORT).judge(eps)
            for t in (t for e in eps for t in e.turns):
                assert t.gate_label == target and t.gate == weights[target]
                assert set(t.gate_probs) == set(labels) and sum(t.gate_probs.values()) == pytest.approx(1.0)
                assert t.gate_probs[target] > 0.9


def test_multi_token_labels_with_colliding_first_tokens(biased):
    chars, labels = char_tokenizer(), ("SKIP", "STRONG")  # one token per character: both start with "S"
    label_ids = _label_ids(chars, labels, biased)
    assert label_ids[0][0] == label_ids[1][0] and all(len(ids) > 1 for ids in label_ids)
    with pytest.raises(JudgeLabelError, match="share a first token"):
        TeacherJudge(GateSpec(labels=labels, scoring="first_token"), biased, chars, SHORT).judge(_episodes())
    for target, ids, gate in zip(labels, label_ids, (0.0, 1.0), strict=True):
        eps = _episodes()
        TeacherJudge(GateSpec(labels=labels, scoring="auto"), _set_bias(biased, ids[1:]), chars, SHORT).judge(eps)
        assert all(t.gate_label == target and t.gate == gate for e in eps for t in e.turns)


def test_probabilities_do_not_depend_on_batching(tok):
    """Batch sizes 1 and 16 are the same math over different shapes: a float64 teacher makes its
    logits agree to float64 rounding. The judge reads label log-probs in float32 by design, so the
    probabilities may differ by float32 rounding of those log-probs (scale |log p|): each side within
    float32_tol, and softmax turns log-prob errors <= d into a relative probability error <= 2 d."""
    model = biased_model({}, dtype=torch.float64)
    probs, scales = [], []
    for max_batch, scoring in ((1, "first_token"), (16, "first_token"), (1, "full"), (16, "full")):
        eps = _episodes()
        judge = TeacherJudge(GateSpec(max_batch=max_batch, scoring=scoring), model, tok, SHORT)
        judge.judge(eps)
        probs.append(torch.tensor([[t.gate_probs[k] for k in THREE] for e in eps for t in e.turns]))
        texts = [judge.prompt_text(e, k) for e in eps for k in range(len(e.turns))]
        lp = judge.label_logprobs([judge._encode(x) for x in texts], judge.label_token_ids(texts[0]))
        scales.append(float(lp.abs().max()))
    for a, b, scale in ((probs[0], probs[1], max(scales[:2])), (probs[2], probs[3], max(scales[2:]))):
        torch.testing.assert_close(a, b, rtol=2 * 2 * float32_tol(scale), atol=0.0)


def test_prompt_has_history_and_feedback_but_no_outcome(tok, biased):
    judge = TeacherJudge(GateSpec(judge_history=2), biased, tok, JudgePrompt(answer_prefix="Verdict:"))
    ep = _episodes()[0]
    text = judge.prompt_text(ep, 3)
    assert ep.task in text and "Nothing happens." in text and ep.turns[3].response_text in text
    assert "take mug 1 from desk 1" in text and "go to desk 1" not in text  # only the last 2 turns
    assert text.endswith("Verdict:")
    ep.turns[3].won, ep.turns[3].done, ep.won = True, False, True
    assert judge.prompt_text(ep, 3) == text  # verifier-free: outcome flags never reach the judge
    label_ids = judge.label_token_ids(text)
    assert label_ids[0] == tok(" SKIP", add_special_tokens=False)["input_ids"]  # leading space after "Verdict:"


def test_always_and_feedback_rule():
    eps = _episodes()
    make_gate(GateSpec(mode="always"), None, None, None).judge(eps)
    assert all(t.gate == 1.0 and t.gate_label == "ALWAYS" for e in eps for t in e.turns)
    eps = _episodes()
    make_gate(GateSpec(mode="feedback_rule"), None, None, None).judge(eps)
    got = [(t.gate_label, t.gate) for e in eps for t in e.turns]
    # ok, ok, repeated action + "Nothing happens.", invalid format, ok
    assert got == [("SKIP", 0.0), ("SKIP", 0.0), ("INTERVENE", 1.0), ("INTERVENE", 1.0), ("SKIP", 0.0)]
    repeat = make_episode([make_turn(index=0, action="look"), make_turn(index=1, action=" Look ")])
    make_gate(GateSpec(mode="feedback_rule"), None, None, None).judge([repeat])
    assert [t.gate for t in repeat.turns] == [0.0, 1.0]


def test_configuration_errors(tok, biased):
    assert tuple(GATES) == GATE_MODES  # every configurable mode has its class, and no class is unreachable
    with pytest.raises(ValueError, match="gate.mode='oracle'; allowed: teacher_judge, always, feedback_rule"):
        GateSpec(mode="oracle")
    with pytest.raises(ValueError, match="teacher model"):
        make_gate(GateSpec(mode="teacher_judge"), None, None, tok)
    with pytest.raises(ValueError, match=r"unknown: \['GOOD', 'BAD'\]"):
        GateSpec(labels=("GOOD", "BAD"))
    assert GateSpec(labels=("SKIP", "WEAK", "INTERVENE"), weak_weight=0.25).label_weights() == {
        "SKIP": 0.0, "WEAK": 0.25, "INTERVENE": 1.0}
    with pytest.raises(ValueError, match="unknown field"):
        JudgePrompt(user="{verdict}").messages(THREE, "t", [], "o", "r", "f")


def test_a_shipped_calibration_shifts_the_verdicts_and_can_be_switched_off(tok, biased):
    """Offsets (model attribute set by sage.shipped) are added to the label log-probs before the argmax."""
    from sage.shipped import BIAS_ATTR

    skip_ids = _label_ids(tok, THREE, biased)[0]
    model = _set_bias(biased, skip_ids)  # the raw judge says SKIP everywhere, with p > 0.9
    try:
        setattr(model, BIAS_ATTR, {"SKIP,WEAK,STRONG": {"SKIP": 0.0, "WEAK": 0.0, "STRONG": 60.0},
                                   "SKIP,INTERVENE": {"SKIP": 0.0, "INTERVENE": -1.0}})
        raw, calibrated, two = _episodes(), _episodes(), _episodes()
        TeacherJudge(GateSpec(labels=THREE, calibrated=False), model, tok, SHORT).judge(raw)
        judge = TeacherJudge(GateSpec(labels=THREE), model, tok, SHORT)
        judge.judge(calibrated)
        TeacherJudge(GateSpec(labels=TWO), model, tok, SHORT).judge(two)
        assert all(t.gate_label == "SKIP" for e in raw for t in e.turns)
        assert all(t.gate_label == "STRONG" and t.gate == 1.0 for e in calibrated for t in e.turns)
        assert all(t.gate_label == "SKIP" for e in two for t in e.turns)  # its own offsets, not the 3-label ones
        for r, c in zip((t for e in raw for t in e.turns), (t for e in calibrated for t in e.turns), strict=True):
            shifted = torch.softmax(torch.tensor([r.gate_probs[x] for x in THREE]).double().log() + judge.bias, -1)
            assert [c.gate_probs[x] for x in THREE] == pytest.approx(shifted.tolist(), abs=1e-9)
    finally:
        delattr(model, BIAS_ATTR)


def test_fitted_offsets_undo_a_label_prior():
    """Scores that rank the truth first up to a constant prior on one label: the fit finds the offset that
    makes every verdict right, and the smallest such one; the raw argmax says that label everywhere."""
    from sage.teacher.calibrate import fit_offsets

    g = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 3, (300,), generator=g)
    logp = torch.nn.functional.one_hot(truth, 3).double() * 1.0 + torch.rand(300, 3, generator=g, dtype=torch.float64) * 0.5
    logp[:, 2] += 2.0  # a prior that makes the raw argmax say label 2 on every row
    assert bool((logp.argmax(-1) == 2).all())
    offsets = fit_offsets(logp, truth)
    assert offsets[0] == 0.0 and bool(((logp + offsets).argmax(-1) == truth).all())
    assert offsets[1] == 0.0 and -2.5 <= float(offsets[2]) <= -1.5  # the prior undone, within the margins
