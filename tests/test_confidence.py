"""Teacher confidence against hand-computed values."""

import math

import pytest
import torch

from sage.distill.confidence import teacher_confidence

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
    z = logits([[0.4, 0.3, 0.3], P])
    out = teacher_confidence(z, "max_prob", minimum=0.5)
    assert out[0].tolist() == pytest.approx([0.5, 0.7], rel=1e-6)


def test_turn_average_with_turn_ids():
    rows = [P, [0.5, 0.25, 0.25], [0.9, 0.05, 0.05], [0.4, 0.3, 0.3], [0.6, 0.2, 0.2], [0.8, 0.1, 0.1]]
    z = logits(rows)
    turn_ids = torch.tensor([[-1, 0, 0, 1, 1, 1]])
    mask = torch.tensor([[0, 1, 1, 1, 1, 0]])
    out = teacher_confidence(z, "max_prob", turn_average=True, mask=mask, turn_ids=turn_ids)
    # token 0 is outside any turn: keeps 0.7; turn 0 = mean(0.5, 0.9); turn 1 = mean over masked (0.4, 0.6),
    # which the unmasked token 5 of that turn also receives.
    assert out[0].tolist() == pytest.approx([0.7, 0.7, 0.7, 0.5, 0.5, 0.5], rel=1e-6)


def test_turn_average_rows_are_separate_and_default_to_one_turn_per_row():
    z = torch.cat([logits([[0.5, 0.25, 0.25], [0.9, 0.05, 0.05]]), logits([[0.4, 0.3, 0.3], P])])  # [2, 2, 3]
    same_ids = torch.zeros(2, 2, dtype=torch.long)
    out = teacher_confidence(z, "max_prob", turn_average=True, turn_ids=same_ids)
    assert out.flatten().tolist() == pytest.approx([0.7, 0.7, 0.55, 0.55], rel=1e-6)
    mask = torch.tensor([[1, 1], [0, 1]])
    out = teacher_confidence(z, "max_prob", turn_average=True, mask=mask)
    assert out.flatten().tolist() == pytest.approx([0.7, 0.7, 0.7, 0.7], rel=1e-6)


def test_floor_after_turn_average():
    z = logits([[0.4, 0.3, 0.3], [0.9, 0.05, 0.05]])
    out = teacher_confidence(z, "max_prob", minimum=0.7, turn_average=True)
    assert out[0].tolist() == pytest.approx([0.7, 0.7], rel=1e-6)  # mean 0.65, floored


def test_unknown_kind():
    with pytest.raises(ValueError, match=r"'entropy'.*max_prob"):
        teacher_confidence(torch.zeros(1, 1, 3), "entropy")
