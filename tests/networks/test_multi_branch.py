from __future__ import annotations

import pytest
import torch
from torch import nn

from cggm_seg.networks import Fusion
from cggm_seg.networks.multi_branch import check_branch_names


def test_fusion_modes():
    a, b = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    torch.testing.assert_close(Fusion("sum")([a, b]), a + b)
    torch.testing.assert_close(Fusion("mean")([a, b]), (a + b) / 2)
    projection = nn.Conv1d(6, 3, 1)
    torch.testing.assert_close(Fusion("concat", projection)([a, b]), projection(torch.cat([a, b], dim=1)))


def test_fusion_sum_and_mean_have_no_parameters():
    assert not list(Fusion("sum", nn.Linear(4, 2)).parameters())
    assert not list(Fusion("mean").parameters())


@pytest.mark.parametrize(
    ("mode", "match"), [("max", "fusion must be one of"), ("concat", "needs a projection")]
)
def test_fusion_invalid(mode, match):
    with pytest.raises(ValueError, match=match):
        Fusion(mode)


def test_check_branch_names():
    assert check_branch_names(["t1", "t2"]) == ("t1", "t2")
    for names, match in [
        ([], "at least one"),
        (["a", "a"], "unique"),
        (["a", ""], "non-empty"),
        ("ab", "string"),
    ]:
        with pytest.raises(ValueError, match=match):
            check_branch_names(names)
