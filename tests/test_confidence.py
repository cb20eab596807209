"""Teacher confidence against hand-computed values."""

import math

import pytest
import torch

from sage.distill.confidence import finish_confidence, teacher_confidence

P = [0.7, 0.2, 0.1]


def logits(rows):
    """[1, T, V] logits from a list of T probability vectors."""
    return torch.tensor([[[math.log(p) for p in row] for row in rows]])


def test_max_prob_and_neg_entropy_hand_values():
    z = logits([P])
    assert teacher_confidence(z, "max_prob").item() == pytest.approx(0.7, rel=1e-6)
    entropy = -sum(p * math.log(p) for p in P)
    expected = 1 - entropy / math.log(3)
    assert teacher_confidence(z, "neg_entropy").item() == pytest.approx(expected, rel=1e-5)
    assert teacher_confidence(z, "none").item() == 1.0


def test_uniform_and_one_hot_extremes():
    uniform = torch.zeros(1, 1, 5)
    assert teacher_confidence(uniform, "neg_entropy").item() == pytest.approx(0.0, abs=1e-6)
    assert teacher_confidence(uniform, "max_prob").item() == pytest.approx(0.2, rel=1e-6)
    peaked = torch.tensor([[[60.0, 0.0, 0.0, 0.0, 0.0]]])
    assert teacher_confidence(peaked, "neg_entropy").item() == pytest.approx(1.0, abs=1e-5)
    assert teacher_confidence(peaked, "max_prob").item() == pytest.approx(1.0, abs=1e-6)


def test_temperature_and_detached():
    z = torch.tensor([[[2.0, 0.0]]], requires_grad=True)
    out = teacher_confidence(z, "max_prob", temperature=2.0)
    assert out.item() == pytest.approx(math.exp(1) / (math.exp(1) + 1), rel=1e-6)
    assert not out.requires_grad


def test_floor():
    kappa = teacher_confidence(logits([[0.4, 0.3, 0.3], P]), "max_prob")[0]
    assert finish_confidence(kappa, minimum=0.5).tolist() == pytest.approx([0.5, 0.7], rel=1e-6)


def test_turn_average_is_the_turn_mean_and_the_floor_comes_after():
    kappa = torch.tensor([0.5, 0.9, 0.4], dtype=torch.float64)  # one turn's tokens
    assert finish_confidence(kappa, turn_average=True).tolist() == pytest.approx([0.6] * 3, rel=1e-15)
    assert finish_confidence(kappa, minimum=0.7, turn_average=True).tolist() == [0.7] * 3  # mean 0.6, floored
    assert finish_confidence(kappa[:0], turn_average=True).numel() == 0


def test_unknown_kind():
    with pytest.raises(ValueError, match=r"'entropy'.*max_prob"):
        teacher_confidence(torch.zeros(1, 1, 3), "entropy")
