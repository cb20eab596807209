"""Token divergences against hand-computed values (plain Python math, not the code under test)."""

import math

import pytest
import torch

from sage.distill.divergence import target_logprobs, token_divergence
from sage.specs import DIVERGENCES as DIVERGENCE_KINDS

PS = [0.7, 0.2, 0.1]  # student
PT = [0.5, 0.3, 0.2]  # teacher


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def softmax(z):
    e = [math.exp(x) for x in z]
    return [x / sum(e) for x in e]


def logits(probs, dtype=torch.float32):
    """[1, 1, V] logits whose softmax is `probs`."""
    return torch.tensor([[[math.log(p) if p > 0 else -math.inf for p in probs]]], dtype=dtype)


def div(ps, pt, kind, **kw):
    return token_divergence(logits(ps), logits(pt), None, kind=kind, **kw)


def test_reverse_and_forward_kl_hand_values():
    assert div(PS, PT, "reverse_kl").item() == pytest.approx(kl(PS, PT), rel=1e-5)
    assert div(PS, PT, "forward_kl").item() == pytest.approx(kl(PT, PS), rel=1e-5)
    # reverse KL is forward KL with the roles swapped
    assert div(PS, PT, "reverse_kl").item() == pytest.approx(div(PT, PS, "forward_kl").item(), rel=1e-6)


def test_jsd_endpoints_and_interior():
    assert div(PS, PT, "jsd", beta=0.0).item() == pytest.approx(kl(PT, PS), rel=1e-5)
    assert div(PS, PT, "jsd", beta=1.0).item() == pytest.approx(kl(PS, PT), rel=1e-5)
    beta = 0.3
    m = [beta * t + (1 - beta) * s for s, t in zip(PS, PT, strict=True)]
    expected = beta * kl(PT, m) + (1 - beta) * kl(PS, m)
    assert div(PS, PT, "jsd", beta=beta).item() == pytest.approx(expected, rel=1e-5)
    # beta=0.5 is the symmetric Jensen-Shannon divergence
    assert div(PS, PT, "jsd", beta=0.5).item() == pytest.approx(div(PT, PS, "jsd", beta=0.5).item(), rel=1e-6)


def test_jsd_scaled_limits_match_the_kl_endpoints():
    """JSD_beta / beta -> forward KL as beta -> 0, JSD_beta / (1 - beta) -> reverse KL as beta -> 1."""
    s, t = logits(PS, torch.float64), logits(PT, torch.float64)
    small = 1e-5
    near0 = token_divergence(s, t, None, "jsd", beta=small).item() / small
    near1 = token_divergence(s, t, None, "jsd", beta=1 - small).item() / small
    assert near0 == pytest.approx(kl(PT, PS), rel=1e-3)
    assert near1 == pytest.approx(kl(PS, PT), rel=1e-3)


def test_temperature_divides_both_logits():
    zs, zt = [2.0, 1.0, 0.0], [0.0, 1.0, 3.0]
    s, t = torch.tensor([[zs]]), torch.tensor([[zt]])
    tau = 2.0
    ps, pt = softmax([z / tau for z in zs]), softmax([z / tau for z in zt])
    assert token_divergence(s, t, None, "reverse_kl", temperature=tau).item() == pytest.approx(
        kl(ps, pt), rel=1e-5
    )
    assert token_divergence(s, t, None, "forward_kl", temperature=tau).item() == pytest.approx(
        kl(pt, ps), rel=1e-5
    )
    y = torch.tensor([[0]])
    expected = math.log(ps[0]) - math.log(pt[0])
    assert token_divergence(s, t, y, "sampled_reverse_kl", temperature=tau).item() == pytest.approx(
        expected, rel=1e-5
    )
    with pytest.raises(ValueError, match="temperature"):
        token_divergence(s, t, None, "reverse_kl", temperature=0.0)


@pytest.mark.parametrize("kind", ["reverse_kl", "forward_kl", "jsd"])
def test_padded_vocab_uses_shared_rows(kind):
    s = logits(PS)
    t_padded = torch.cat([logits(PT), torch.tensor([[[9.0, 7.0]]])], dim=-1)  # teacher V=5, junk padding rows
    expected = div(PS, PT, kind).item()
    assert token_divergence(s, t_padded, None, kind).item() == pytest.approx(expected, rel=1e-6)
    s_padded = torch.cat([s, torch.tensor([[[5.0]]])], dim=-1)  # student padded instead
    assert token_divergence(s_padded, logits(PT), None, kind).item() == pytest.approx(expected, rel=1e-6)


def test_padded_vocab_sampled():
    t_padded = torch.cat([logits(PT), torch.tensor([[[9.0, 7.0]]])], dim=-1)
    y = torch.tensor([[1]])
    expected = math.log(PS[1]) - math.log(PT[1])
    assert token_divergence(logits(PS), t_padded, y, "sampled_reverse_kl").item() == pytest.approx(
        expected, rel=1e-5
    )
    with pytest.raises(ValueError, match="outside"):
        token_divergence(logits(PS), t_padded, torch.tensor([[3]]), "sampled_reverse_kl")


@pytest.mark.parametrize("kind", DIVERGENCE_KINDS)
def test_zero_when_student_equals_teacher(kind):
    torch.manual_seed(0)
    z = torch.randn(2, 3, 7)
    y = torch.randint(0, 7, (2, 3))
    out = token_divergence(z, z.clone(), y, kind)
    assert out.shape == (2, 3)
    assert torch.allclose(out, torch.zeros(2, 3), atol=1e-6)


def test_sampled_reverse_kl_value_and_policy_gradient():
    s = logits(PS).repeat(1, 2, 1).requires_grad_(True)  # [1, 2, 3]
    t = logits(PT).repeat(1, 2, 1)
    y = torch.tensor([[0, 2]])
    out = token_divergence(s, t, y, "sampled_reverse_kl")
    ratios = [math.log(PS[0] / PT[0]), math.log(PS[2] / PT[2])]
    assert out[0].tolist() == pytest.approx(ratios, rel=1e-5)
    out.sum().backward()
    # d log p_s(y) / d z_v = 1[v == y] - p_s(v); gradient = ratio * that (teacher and ratio held fixed)
    for k, (yk, r) in enumerate(zip([0, 2], ratios, strict=True)):
        expected = [r * ((1.0 if v == yk else 0.0) - PS[v]) for v in range(3)]
        assert s.grad[0, k].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_sampled_reverse_kl_from_precomputed_teacher_logprobs():
    s = logits(PS).requires_grad_(True)
    y = torch.tensor([[1]])
    t_lp = torch.tensor([[math.log(PT[1])]])
    out = token_divergence(s, None, y, "sampled_reverse_kl", teacher_target_logprobs=t_lp)
    r = math.log(PS[1] / PT[1])
    assert out.item() == pytest.approx(r, rel=1e-5)
    out.sum().backward()
    assert s.grad[0, 0].tolist() == pytest.approx([r * (-PS[0]), r * (1 - PS[1]), r * (-PS[2])], rel=1e-5)
    with pytest.raises(ValueError, match="teacher_logits or teacher_target_logprobs"):
        token_divergence(s, None, y, "sampled_reverse_kl")


def test_target_logprobs_ignores_negative_labels():
    out = target_logprobs(logits(PS).repeat(1, 2, 1), torch.tensor([[2, -100]]))
    assert out[0, 0].item() == pytest.approx(math.log(PS[2]), rel=1e-5)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kind", DIVERGENCE_KINDS)
def test_bf16_inputs_compute_in_float32(kind):
    torch.manual_seed(1)
    s, t = torch.randn(2, 3, 11), torch.randn(2, 3, 11)
    y = torch.randint(0, 11, (2, 3))
    ref = token_divergence(s.bfloat16().float(), t.bfloat16().float(), y, kind, beta=0.4)
    out = token_divergence(s.bfloat16().requires_grad_(True), t.bfloat16(), y, kind, beta=0.4)
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-6)


@pytest.mark.parametrize(
    "kind,beta", [("reverse_kl", 0.5), ("forward_kl", 0.5), ("jsd", 0.3), ("jsd", 0.0), ("jsd", 1.0)]
)
def test_gradcheck_float64_and_teacher_gets_no_grad(kind, beta):
    torch.manual_seed(2)
    s = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x: token_divergence(x, t, None, kind, beta=beta, temperature=1.5), (s,)
    )
    token_divergence(s, t, None, kind, beta=beta).sum().backward()
    assert t.grad is None


def test_masked_vocab_minus_inf_is_finite():
    s = logits([0.5, 0.5, 0.0]).requires_grad_(True)
    t = logits([0.25, 0.75, 0.0])
    out = token_divergence(s, t, None, "reverse_kl")
    assert out.item() == pytest.approx(kl([0.5, 0.5], [0.25, 0.75]), rel=1e-5)
    out.sum().backward()
    assert torch.isfinite(s.grad).all()


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match=r"'kl'.*reverse_kl"):
        div(PS, PT, "kl")
    with pytest.raises(ValueError, match="beta"):
        div(PS, PT, "jsd", beta=1.5)
    with pytest.raises(ValueError, match="teacher_logits"):
        token_divergence(logits(PS), None, None, "reverse_kl")
