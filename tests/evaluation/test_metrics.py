import math

import pytest
import torch

from cggm_seg.apps.brats.region_metrics import region_metrics, summarise_cases


def _cube(shape, lo, hi):
    t = torch.zeros(shape)
    t[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1
    return t


def test_dice_hand_computed():
    shape = (10, 10, 10)
    # TC: prediction 8 voxels, label 8 voxels, overlap 4 -> 2*4/(8+8) = 0.5
    tc_p, tc_y = _cube(shape, (0, 0, 0), (2, 2, 2)), _cube(shape, (1, 0, 0), (3, 2, 2))
    # WT: identical -> 1
    wt = _cube(shape, (0, 0, 0), (4, 4, 4))
    # ET: both empty -> 1 by the BraTS convention
    et = torch.zeros(shape)
    pred, label = torch.stack([tc_p, wt, et]), torch.stack([tc_y, wt, et])
    m = region_metrics(pred, label, spacing=(2.0, 2.0, 2.0))
    assert m["dice_tc"] == pytest.approx(0.5)
    assert m["dice_wt"] == pytest.approx(1.0)
    assert m["dice_et"] == pytest.approx(1.0)
    assert m["dice_mean"] == pytest.approx(2.5 / 3)
    assert m["hd95_wt"] == 0.0
    assert m["hd95_et"] == 0.0
    # the two TC cubes are shifted by one voxel = 2 mm
    assert m["hd95_tc"] == pytest.approx(2.0)


def test_one_sided_empty_region_is_worst_case():
    shape = (6, 8, 10)
    y = torch.stack([_cube(shape, (1, 1, 1), (3, 3, 3))] * 3)
    p = y.clone()
    p[2] = 0  # ET missed entirely
    m = region_metrics(p, y, spacing=(1.0, 1.0, 2.0))
    assert m["dice_et"] == 0.0
    assert m["hd95_et"] == pytest.approx(math.sqrt(6**2 + 8**2 + 20**2))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="label shape"):
        region_metrics(torch.zeros(3, 4, 4, 4), torch.zeros(3, 4, 4, 5))
    with pytest.raises(ValueError, match="3 channels"):
        region_metrics(torch.zeros(2, 4, 4, 4), torch.zeros(2, 4, 4, 4))


def test_summarise_cases():
    s = summarise_cases([{"case_id": "a", "dice_tc": 0.2}, {"case_id": "b", "dice_tc": 0.4}])
    assert set(s) == {"dice_tc"}
    assert s["dice_tc"]["mean"] == pytest.approx(0.3)
    assert s["dice_tc"]["median"] == pytest.approx(0.3)
    assert s["dice_tc"]["std"] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        summarise_cases([])
