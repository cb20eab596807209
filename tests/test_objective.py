"""Weighting, step-wide normalization and accumulation invariance of the distillation loss."""

import math

import pytest
import torch

from sage.distill.divergence import token_divergence
from sage.distill.objective import step_denominator
from sage.specs import LossSpec
from tests.helpers import assert_equal_up_to_float64_rounding, weighted_loss

LOSS = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
MASK = torch.tensor([[1, 1, 1, 0]])
GATE = torch.tensor([[0.0, 0.5, 1.0, 1.0]])
CONF = torch.tensor([[0.9, 0.8, 0.5, 0.7]])
NUMERATOR = 0.0 * 0.9 * 1 + 0.5 * 0.8 * 2 + 1.0 * 0.5 * 3  # = 2.3; the 4th token is off the mask


def loss_for(normalize, token_loss=LOSS, gate=GATE, conf=CONF, mask=MASK):
    denom = step_denominator(mask, gate, conf, normalize)
    return weighted_loss(token_loss, mask, gate, conf, denom)


def test_opd_and_weighted_hand_values():
    assert step_denominator(MASK, GATE, CONF, "opd").item() == 3.0
    assert step_denominator(MASK, GATE, CONF, "weighted").item() == pytest.approx(0.4 + 0.5)
    assert loss_for("opd").item() == pytest.approx(NUMERATOR / 3, rel=1e-6)
    assert loss_for("weighted").item() == pytest.approx(NUMERATOR / 0.9, rel=1e-6)


@pytest.mark.parametrize("c", [0.1, 0.5, 1.0, 3.0])
def test_weighted_keeps_opd_scale_for_constant_weights(c):
    ones = torch.ones_like(LOSS)
    token_mean = (1 + 2 + 3) / 3
    assert loss_for("weighted", gate=ones, conf=ones * c).item() == pytest.approx(token_mean, rel=1e-6)
    assert loss_for("opd", gate=ones, conf=ones).item() == pytest.approx(token_mean, rel=1e-6)


def test_inf_at_masked_or_zero_weight_positions_is_ignored():
    token_loss = torch.tensor([[math.inf, 2.0, 3.0, math.nan]], requires_grad=True)  # gate 0 / off-mask
    gate = GATE.clone()
    gate[0, 3] = math.nan  # even a NaN gate on padding must not leak
    out = loss_for("weighted", token_loss=token_loss, gate=gate)
    assert out.item() == pytest.approx((0.5 * 0.8 * 2 + 0.5 * 3) / 0.9, rel=1e-6)
    out.backward()
    assert token_loss.grad[0].tolist() == pytest.approx([0.0, 0.4 / 0.9, 0.5 / 0.9, 0.0], rel=1e-6)


@pytest.mark.parametrize("normalize", ["weighted", "opd"])
def test_all_skipped_is_exactly_zero_with_zero_grads(normalize):
    token_loss = torch.tensor([[math.inf, 2.0, math.nan, 1.0]], requires_grad=True)
    zero_gate = torch.zeros_like(GATE)
    out = loss_for(normalize, token_loss=token_loss, gate=zero_gate)
    assert out.item() == 0.0 and not torch.isnan(out)
    assert out.grad_fn is not None
    out.backward()
    assert torch.equal(token_loss.grad, torch.zeros_like(token_loss))


def test_denominator_may_be_a_float_and_eps_guards_zero():
    out = weighted_loss(LOSS, MASK, GATE, CONF, 0.0, eps=0.5)
    assert out.item() == pytest.approx(NUMERATOR / 0.5, rel=1e-6)
    out = weighted_loss(LOSS, MASK, GATE, CONF, 2.0)
    assert out.item() == pytest.approx(NUMERATOR / 2.0, rel=1e-6)


def _batch(seed=0, B=6, T=4, V=5):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    teacher = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    target = torch.randint(0, V, (B, T), generator=g)
    lengths = torch.tensor([4, 2, 3, 1, 4, 2])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    gate = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0, 0.5])[:, None].expand(B, T)  # turn-level gates
    conf = torch.rand(B, T, generator=g, dtype=torch.float64) * 0.9 + 0.1
    return student, teacher, target, mask, gate, conf


def _step(splits, kind, normalize):
    """One optimizer step over the batch split into micro-batches of the given sizes."""
    student, teacher, target, mask, gate, conf = _batch()
    param = student.clone().requires_grad_(True)
    bounds = torch.tensor([0, *splits]).cumsum(0).tolist()
    parts = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    total = sum(step_denominator(mask[p], gate[p], conf[p], normalize) for p in parts)
    losses = []
    for p in parts:
        tok = token_divergence(param[p], teacher[p], target[p], kind)
        loss = weighted_loss(tok, mask[p], gate[p], conf[p], total)
        loss.backward()
        losses.append(loss.detach())
    return torch.stack(losses).sum(), param.grad


@pytest.mark.parametrize("kind", ["reverse_kl", "sampled_reverse_kl"])
@pytest.mark.parametrize("normalize", ["weighted", "opd"])
def test_accumulation_invariance(kind, normalize):
    ref_loss, ref_grad = _step([6], kind, normalize)
    assert ref_loss.item() != 0.0 and ref_grad.abs().sum() > 0
    terms = math.prod(_batch()[0].shape)  # every logit enters the step loss's sums once
    for splits in ([3, 3], [1, 2, 3], [4, 1, 1]):
        loss, grad = _step(splits, kind, normalize)
        assert_equal_up_to_float64_rounding(loss, ref_loss, terms=terms)
        assert_equal_up_to_float64_rounding(grad, ref_grad, terms=terms)


def test_step_denominator_sums_over_micro_batches():
    _, _, _, mask, gate, conf = _batch()
    whole = step_denominator(mask, gate, conf, "weighted")
    parts = step_denominator(mask[:2], gate[:2], conf[:2], "weighted") + step_denominator(
        mask[2:], gate[2:], conf[2:], "weighted"
    )
    assert whole.dtype == torch.float64
    assert_equal_up_to_float64_rounding(parts, whole, terms=mask.numel())
    assert step_denominator(mask, gate, conf, "opd").item() == 16.0  # skipped turns still count


def test_bad_config_values_raise_clearly():
    with pytest.raises(ValueError, match=r"'mean'.*weighted"):
        step_denominator(MASK, GATE, CONF, "mean")
    with pytest.raises(ValueError, match=r"model.loss.divergence='kl'.*reverse_kl"):
        LossSpec(divergence="kl")
    with pytest.raises(ValueError, match=r"model.loss.normalize='sum'.*opd"):
        LossSpec(normalize="sum")
    with pytest.raises(ValueError, match=r"model.loss.beta=2"):
        LossSpec(divergence="jsd", beta=2.0)
    with pytest.raises(ValueError, match=r"model.loss.temperature=0"):
        LossSpec(temperature=0.0)
    with pytest.raises(ValueError, match=r"model.loss.eps=0"):
        LossSpec(eps=0.0)


def test_loss_spec_parses_with_jsonargparse():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--loss", type=LossSpec, default=LossSpec())
    cfg = parser.parse_args(["--loss.divergence=jsd", "--loss.beta=0.2", "--loss.normalize=opd"])
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    spec = instantiate(cfg).loss
    assert spec == LossSpec(divergence="jsd", beta=0.2, normalize="opd")
