"""The LightningModule's loss path: accumulation invariance, SFT, skipped steps, checkpoint contents."""

from __future__ import annotations

import math

import pytest
import torch

from sage.distill.loss_kinds import LOSS_KINDS
from sage.module import SageModule
from sage.plan import plan_steps
from sage.samples import window_samples
from sage.specs import ConfidenceSpec, GateSpec, LossSpec, ModelSpec
from tests.helpers import make_episode, make_turn, with_teacher_pass


def _module(dtype="float64", **kw) -> SageModule:
    """Float64 tiny models: comparisons across micro-batch splits are then exact to ~1e-15 on any CPU."""
    kw.setdefault("teacher", ModelSpec("tiny-random", seed=1, dtype=dtype))
    module = SageModule(student=ModelSpec("tiny-random", seed=0, dtype=dtype), **kw)
    module.build_models()
    return module


def _episodes():
    """Three turns with gates 1, 0.5, 0 and hand-set confidences."""
    turns = [
        make_turn(0, context_ids=[1, 30, 31, 32], response_ids=[40, 41, 42], gate=1.0, confidence=[0.9, 0.5, 0.2]),
        make_turn(1, context_ids=[1, 30, 33], response_ids=[43, 44], gate=0.5, confidence=[0.4, 0.8]),
        make_turn(2, context_ids=[1, 34], response_ids=[45, 46, 47, 48], gate=0.0, confidence=[1.0] * 4),
    ]
    return [make_episode(turns)]


def _steps(module, max_tokens, episodes=None):
    episodes = episodes or _episodes()
    hidden = with_teacher_pass(module.teacher, episodes, module.vocab_rows) if module.teacher is not None else {}
    return plan_steps(window_samples(episodes, hidden), 8, max_tokens, 2, module.loss_spec.normalize, seed=0)


def _loss_and_grads(module, steps):
    module.student.zero_grad()
    total = 0.0
    for mb in (mb for s in steps for mb in s.micro_batches):
        if not mb.padding:
            loss, _ = module.micro_loss(mb.tokens, mb.denominator)
            loss.backward()
            total += float(loss.detach())
    grads = [p.grad.clone() for p in module.trainable_parameters()]
    return total, grads


def _close(a, b):
    """Float64 results of differently shaped computations: equal up to a few hundred ulps."""
    torch.testing.assert_close(a, b, rtol=256 * torch.finfo(torch.float64).eps, atol=1e-13)


@pytest.mark.parametrize("divergence", ["reverse_kl", "sampled_reverse_kl", "jsd"])
@pytest.mark.parametrize("normalize", ["weighted", "opd"])
def test_gradient_accumulation_split_does_not_change_loss_or_gradient(divergence, normalize):
    module = _module(loss=LossSpec(divergence=divergence, normalize=normalize, chunk_tokens=2))
    one, many = _steps(module, max_tokens=10_000), _steps(module, max_tokens=8)
    assert len(one) == 1 and len(one[0].micro_batches) == 1
    assert len(many[0].micro_batches) == 2  # the gate-0 turn is not forwarded at all
    assert one[0].denominator == many[0].denominator and one[0].trains
    l1, g1 = _loss_and_grads(module, one)
    l2, g2 = _loss_and_grads(module, many)
    _close(torch.tensor(l1), torch.tensor(l2))
    for a, b in zip(g1, g2, strict=True):
        _close(a, b)


def test_denominators_follow_the_normalization():
    # opd: every response token counts, skipped turn included: 3 + 2 + 4 = 9
    module = _module(loss=LossSpec(normalize="opd"))
    assert _steps(module, 10_000)[0].denominator == pytest.approx(9.0)
    # weighted: sum g * kappa = (0.9 + 0.5 + 0.2) * 1 + (0.4 + 0.8) * 0.5 = 2.2
    module = _module(loss=LossSpec(normalize="weighted"))
    assert _steps(module, 10_000)[0].denominator == pytest.approx(2.2)


@pytest.mark.parametrize("chunk_tokens", [1, 1024])
def test_weighted_loss_matches_a_hand_assembled_value(chunk_tokens):
    """One teacher pass: the step's loss, built from the teacher's annotation-time hidden states, equals
    KL divergences from plain full forwards of both models."""
    module = _module(loss=LossSpec(divergence="reverse_kl", normalize="weighted", chunk_tokens=chunk_tokens))
    mb = _steps(module, 10_000)[0].micro_batches[0]
    loss = module.micro_loss(mb.tokens, mb.denominator)[0].detach()
    # rebuild by hand from a plain forward of both models on each turn
    num = 0.0
    for t in _episodes()[0].turns[:2]:
        ids = torch.tensor([t.context_ids + t.response_ids])
        with torch.no_grad():
            ls = torch.log_softmax(module.student(ids).logits[0], -1)
            lt = torch.log_softmax(module.teacher(ids).logits[0], -1)
        c = len(t.context_ids)
        for k in range(len(t.response_ids)):
            kl = float((ls[c - 1 + k].exp() * (ls[c - 1 + k] - lt[c - 1 + k])).sum())
            num += t.gate * t.confidence[k] * kl
    # gates, confidences and the step denominator travel as float32 tensors: agree to float32 rounding
    assert float(loss) == pytest.approx(num / 2.2, rel=8 * torch.finfo(torch.float32).eps)


def test_sft_loss_is_token_cross_entropy():
    module = SageModule(student=ModelSpec("tiny-random", dtype="float64"), objective="sft",
                        gate=GateSpec(mode="always"), confidence=ConfidenceSpec(kind="none"),
                        loss=LossSpec(normalize="opd"))
    module.build_models()
    eps = _episodes()
    for t in eps[0].turns:  # SFT serves every turn with weight 1
        t.gate, t.confidence = 1.0, None
    mb = _steps(module, 10_000, eps)[0].micro_batches[0]
    loss = module.micro_loss(mb.tokens, mb.denominator)[0].detach()
    nll, n = 0.0, 0
    for t in eps[0].turns:
        ids = torch.tensor([t.context_ids + t.response_ids])
        with torch.no_grad():
            lp = torch.log_softmax(module.student(ids).logits[0], -1)
        for k, y in enumerate(t.response_ids):
            nll -= float(lp[len(t.context_ids) - 1 + k, y])
            n += 1
    assert float(loss) == pytest.approx(nll / n, rel=1e-12)


def test_all_turns_skipped_gives_a_zero_loss_and_an_empty_step():
    eps = _episodes()
    for t in eps[0].turns:
        t.gate = 0.0
    steps = plan_steps(window_samples(eps), 8, 10_000, 2, "weighted", seed=0)
    assert len(steps) == 1 and steps[0].denominator == 0.0 and not steps[0].trains
    (mb,) = steps[0].micro_batches  # nothing to forward: one padding slot that still ends the step
    assert mb.padding and mb.last and not mb.trains
    assert plan_steps(window_samples(eps), 8, 10_000, 2, "opd", seed=0)[0].denominator == 9.0  # opd counts them


def test_sft_needs_no_teacher_but_distill_does():
    with pytest.raises(ValueError, match="teacher"):
        SageModule(student=ModelSpec("tiny-random"), objective="distill")
    with pytest.raises(ValueError, match="objective"):
        SageModule(student=ModelSpec("tiny-random"), objective="rl")


def test_annotate_uses_the_configured_gate_and_confidence():
    from sage.distill.gate import make_gate
    from sage.models import freeze
    from tests.helpers import biased_model

    module = _module(gate=GateSpec(mode="teacher_judge", labels=("SKIP", "INTERVENE")),
                     confidence=ConfidenceSpec(kind="max_prob"))
    eps = _episodes()
    judge = make_gate(module.gate_spec, None, module.teacher, module.tokenizer)
    skip_ids = judge.label_token_ids(judge.prompt_text(eps[0], 0))[0]
    module.teacher = freeze(biased_model({i: 50.0 for i in skip_ids}, seed=1))
    for t in eps[0].turns:
        t.confidence = None
    annotation = module.make_annotator()(eps, "window")
    turns = eps[0].turns
    assert [t.gate_label for t in turns] == ["SKIP"] * 3 and all(t.gate == 0.0 for t in turns)
    assert all(t.confidence is None for t in turns) and annotation.teacher_hidden == {}  # skipped: no teacher pass

    module.gate_spec = GateSpec(mode="always")
    hidden = module.make_annotator()(eps, "window").teacher_hidden
    assert all(len(t.confidence) == len(t.response_ids) for t in turns)
    assert all(0 < c <= 1 and not math.isnan(c) for t in turns for c in t.confidence)
    assert {k: h.shape for k, h in hidden.items()} == {(0, k): (len(t.response_ids), 64) for k, t in enumerate(turns)}

    module.loss_spec = LossSpec(divergence="sampled_reverse_kl")  # reads log pi_T(y) only: no hidden states kept
    module.loss_kind = LOSS_KINDS["sampled_reverse_kl"]
    assert module.make_annotator()(eps, "window").teacher_hidden == {}
    assert all(len(t.teacher_logprobs) == len(t.response_ids) for t in turns)


def test_checkpoint_keeps_only_trainable_student_weights():
    from sage.specs import LoraSpec

    module = SageModule(student=ModelSpec("tiny-random", lora=LoraSpec(r=2, alpha=4, dropout=0.0)),
                        teacher=ModelSpec("tiny-random", seed=1))
    module.build_models()
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    keys = list(ckpt["state_dict"])
    assert keys and all("lora_" in k and k.startswith("student.") for k in keys)
    module.on_load_checkpoint(ckpt)
    with pytest.raises(ValueError, match="does not train"):
        module.on_load_checkpoint({"state_dict": {"teacher.lm_head.weight": torch.zeros(1)}})
