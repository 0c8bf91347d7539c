"""Classification, regression and CMU-MOSI metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cggm_seg.apps.multiview.vector_metrics import (
    classification_metrics,
    mosi_metrics,
    regression_metrics,
    task_metrics,
)

PRED = torch.tensor([2.4, -0.6, 0.2, -2.0, 1.4, 0.0])
TRUTH = torch.tensor([3.0, -1.0, 0.0, 0.5, 1.0, -0.4])


def test_mosi_metrics_by_hand():
    m = mosi_metrics(PRED[:, None], TRUTH[:, None])
    # |errors| 0.6 0.4 0.2 2.5 0.4 0.4 -> 4.5 / 6
    assert m["mae"] == pytest.approx(0.75)
    # has0: pred >= 0 T F T F T T, truth >= 0 T F T T T F -> 4 of 6 agree
    assert m["acc2_has0"] == pytest.approx(4 / 6)
    # class 1 (>= 0): TP 3, FP 1, FN 1 -> F1 3/4 (support 4); class 0: TP 1, FP 1, FN 1 -> 1/2 (support 2)
    assert m["f1_has0"] == pytest.approx((4 * 0.75 + 2 * 0.5) / 6)
    # non0: the sample with truth 0 is left out; pred > 0 T F F T F, truth > 0 T F T T F -> 4 of 5
    assert m["acc2_non0"] == pytest.approx(0.8)
    # class 1: TP 2, FP 0, FN 1 -> F1 0.8 (support 3); class 0: TP 2, FP 1, FN 0 -> 0.8 (support 2)
    assert m["f1_non0"] == pytest.approx(0.8)
    # rounded: pred 2 -1 0 -2 1 0, truth 3 -1 0 0 (0.5 rounds to even) 1 -0 -> 4 of 6
    assert m["acc7"] == pytest.approx(4 / 6)
    # Pearson: sum(dp * dt) = 7.47667, sum(dp^2) = 11.79333, sum(dt^2) = 9.80833
    assert m["corr"] == pytest.approx(7.47667 / math.sqrt(11.79333 * 9.80833), abs=1e-4)
    assert m["corr"] == pytest.approx(np.corrcoef(PRED, TRUTH)[0, 1], abs=1e-6)


def test_mosi_acc7_clips_to_the_scale():
    m = mosi_metrics(torch.tensor([5.0, -4.2]), torch.tensor([3.0, -3.0]))
    assert m["acc7"] == 1.0 and m["mae"] == pytest.approx((2.0 + 1.2) / 2)


def test_regression_metrics_by_hand_in_the_targets_units():
    m = regression_metrics(
        torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 2.0]), scale=2.0, offset=1.0
    )
    # back in units: pred 3 5 7, target 3 7 5
    assert m["mae"] == pytest.approx(4 / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(8 / 3))
    assert m["r2"] == pytest.approx(0.0)  # SS_res 8 = SS_tot 8
    assert m["pearson_r"] == pytest.approx(0.5)  # dp (-2, 0, 2), dt (-2, 2, 0): 4 / 8


def test_classification_metrics_by_hand():
    logits = torch.tensor([[3.0, 0, 0], [0, 2.0, 0], [0, 0, 1.0], [0, 0, 2.0]])
    m = classification_metrics(logits, torch.tensor([0, 1, 1, 2]))
    assert m["accuracy"] == 0.75
    # F1: class 0 1; class 1 P 1 R 1/2 -> 2/3; class 2 P 1/2 R 1 -> 2/3; supports 1, 2, 1
    assert m["f1_macro"] == pytest.approx(7 / 9)
    assert m["f1_weighted"] == pytest.approx((1 + 2 * 2 / 3 + 2 / 3) / 4)


def test_constant_targets_give_nan_r2_not_an_error():
    assert math.isnan(regression_metrics(torch.ones(3), torch.ones(3))["r2"])


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match="unknown metric family 'food'"):
        task_metrics("food", torch.zeros(2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="one prediction per target"):
        regression_metrics(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="expected logits B x C and B labels"):
        classification_metrics(torch.zeros(3), torch.zeros(3))
