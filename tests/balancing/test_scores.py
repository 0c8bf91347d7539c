import math

import pytest
import torch

from cggm_seg.balancing.scores import (
    SCORES,
    accuracy,
    dice_score,
    get_score,
    inverse_mae,
    region_true_class_probability,
    sign_accuracy,
    true_class_probability,
)

BIG = 50.0  # a logit whose sigmoid is 1 to float precision


def test_soft_and_hard_dice_match_hand_values():
    # one sample, one channel, 4 voxels: p = sigmoid(0) = 0.5 everywhere except a confident voxel
    logits = torch.tensor([[[BIG, 0.0, -BIG, -BIG]]])
    target = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]])
    # soft: I = 1 + 0.5, sum p = 1.5, sum t = 2 -> (3 + s) / (3.5 + s)
    assert dice_score(logits, target, smooth=0.0).item() == pytest.approx(3.0 / 3.5)
    # hard: sigmoid(0) = 0.5 is not > 0.5 -> prediction [1, 0, 0, 0]: 2 / 3
    assert dice_score(logits, target, hard=True, smooth=0.0).item() == pytest.approx(2.0 / 3.0)
    assert SCORES["hard_dice"](logits, target).item() == pytest.approx(2.0 / 3.0, abs=1e-5)


def test_dice_averages_channels_and_batch_and_handles_empty_masks():
    target = torch.zeros(2, 3, 2, 2, 2)
    target[0, 0] = 1.0
    logits = torch.full_like(target, -BIG)
    logits[0, 0] = BIG
    # sample 0: channel 0 perfect, channels 1-2 empty & predicted empty -> 1; sample 1: all empty -> 1
    assert dice_score(logits, target, hard=True).item() == pytest.approx(1.0)
    logits[1, 2] = BIG  # a false positive region in an empty channel -> that Dice ~ 0
    assert dice_score(logits, target, hard=True).item() == pytest.approx(5.0 / 6.0, abs=1e-5)
    assert dice_score(logits, target, hard=True, channels=[0, 1]).item() == pytest.approx(1.0)
    value = dice_score(torch.zeros(1, 3, 2, 2, 2), torch.zeros(1, 3, 2, 2, 2))
    assert math.isfinite(value.item())


def test_dice_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        dice_score(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 4, 4))


def test_region_true_class_probability():
    logits = torch.tensor([[[0.0, BIG], [math.log(3.0), -BIG]]])  # p = 0.5, 1, 0.75, 0
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    # p where 1, 1 - p where 0: 0.5, 0, 0.75, 1 -> mean 0.5625
    assert region_true_class_probability(logits, target).item() == pytest.approx(0.5625)


def test_classification_scores():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    target = torch.tensor([0, 1, 1])
    assert accuracy(logits, target).item() == pytest.approx(2.0 / 3.0)
    assert accuracy(logits, torch.nn.functional.one_hot(target, 2)).item() == pytest.approx(2.0 / 3.0)
    p = torch.softmax(logits, dim=1)
    expected = (p[0, 0] + p[1, 1] + p[2, 1]) / 3
    assert true_class_probability(logits, target).item() == pytest.approx(expected.item())
    # binary, one logit
    assert accuracy(torch.tensor([[1.0], [-1.0]]), torch.tensor([1, 1])).item() == pytest.approx(0.5)
    tcp = true_class_probability(torch.tensor([0.0, math.log(3.0)]), torch.tensor([0, 1]))
    assert tcp.item() == pytest.approx((0.5 + 0.75) / 2)


def test_regression_scores():
    pred = torch.tensor([[1.0], [-2.0], [0.5]])
    target = torch.tensor([2.0, -2.0, -0.5])
    assert inverse_mae(pred, target).item() == pytest.approx(1.0 / (1.0 + 2.0 / 3.0))
    assert sign_accuracy(pred, target).item() == pytest.approx(2.0 / 3.0)
    with pytest.raises(ValueError, match="one prediction per target"):
        inverse_mae(pred, torch.zeros(2))


def test_scores_are_detached_floats():
    logits = torch.zeros(2, 3, 2, 2, 2, requires_grad=True)
    for name in ("soft_dice", "hard_dice", "region_true_class_probability"):
        value = get_score(name)(logits, torch.ones(2, 3, 2, 2, 2))
        assert value.ndim == 0 and value.dtype == torch.float32 and not value.requires_grad


def test_get_score_registry():
    assert get_score("accuracy") is accuracy
    smooth = get_score("soft_dice", smooth=1.0)
    assert smooth(torch.full((1, 1, 2), -BIG), torch.zeros(1, 1, 2)).item() == pytest.approx(1.0)
    custom = lambda logits, target: logits.mean()  # noqa: E731
    assert get_score(custom) is custom
    with pytest.raises(ValueError, match="unknown score 'dise'.*soft_dice"):
        get_score("dise")
    with pytest.raises(TypeError, match="does not take"):
        get_score("accuracy", smooth=1.0)


def test_a_softmax_networks_class_index_target_names_the_softmax_scores():
    # a softmax network: 4 class logits, a 1-channel class-index label; the default score is sigmoid Dice
    with pytest.raises(ValueError, match=r"same shape.*score='softmax_dice'"):
        dice_score(torch.zeros(1, 4, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="same shape") as raised:  # a plain mismatch: no softmax hint
        dice_score(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 4, 4))
    assert "softmax" not in str(raised.value)
