"""The multi-view test report and its missing-view audit, on models whose use of the views is known."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from cggm_seg.apps.multiview.vector_report import VectorTestReport, zero_views
from cggm_seg.apps.multiview.views import ViewData


def test_zero_views_zeroes_the_absent_columns():
    x = torch.arange(1.0, 7.0).reshape(1, 6)
    out = zero_views(x, {"a": 2, "b": 3, "c": 1}, {"a": True, "b": False, "c": True})
    assert out.tolist() == [[1.0, 2.0, 0.0, 0.0, 0.0, 6.0]]
    assert x.tolist() == [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]  # the input is not changed
    with pytest.raises(ValueError, match="add up to 5, the input has 6 features"):
        zero_views(x, {"a": 2, "b": 3}, {"a": True, "b": True})


class FirstViewOnly(nn.Module):
    """Class logits from view ``a`` (columns 0-1) only: ``b`` is a dummy player."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return self.scale * x[:, :2]


def _data(n=40):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=g)
    a = torch.nn.functional.one_hot(y, 2).float() * 2 - 1 + 0.1 * torch.randn(n, 2, generator=g)
    b = torch.randn(n, 3, generator=g)
    x = torch.cat([a, b], dim=1)
    return ViewData("toy", "classification", "classification", {"a": 2, "b": 3}, {"test": x}, {"test": y}, 2)


def test_report_audits_views_and_shares_out_the_accuracy(tmp_path):
    report = VectorTestReport(FirstViewOnly(), _data(), tmp_path, title="toy")
    result = report.run()
    assert result["metrics"]["accuracy"] == 1.0
    audit = result["missing_views"]
    assert [r["name"] for r in audit["subsets"]] == ["a", "b", "a+b"]
    acc = {r["name"]: r["accuracy"] for r in audit["subsets"]}
    assert acc["a"] == 1.0 and acc["a+b"] == 1.0
    # without view a the logits are 0: argmax picks class 0, so the accuracy is class 0's share
    share0 = float((_data().y["test"] == 0).float().mean())
    assert acc["b"] == pytest.approx(share0) and audit["empty"] == pytest.approx(share0)
    assert audit["shapley"]["b"] == pytest.approx(0.0)  # the dummy player
    assert sum(audit["shapley"].values()) == pytest.approx(acc["a+b"] - audit["empty"])  # efficiency
    assert audit["subset_mean"] == pytest.approx((1 + share0 + 1) / 3)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["missing_views"]["shapley"] == pytest.approx(audit["shapley"])
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [r["input"] for r in rows] == ["all", "subset:a", "subset:b", "subset:a+b"]
    assert (tmp_path / "missing_views.png").stat().st_size > 0 and (
        tmp_path / "shapley.png"
    ).stat().st_size > 0


def test_regression_report_works_in_the_targets_units(tmp_path):
    class Identity(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return self.w * x[:, :1]

    y = torch.linspace(-1, 1, 11)[:, None]
    x = torch.cat([y + 0.5, torch.zeros(11, 1)], dim=1)  # off by 0.5 in standardised units
    data = ViewData(
        "toy",
        "regression",
        "regression",
        {"a": 1, "b": 1},
        {"test": x},
        {"test": y},
        target_std=10.0,
        target_mean=100.0,
    )
    result = VectorTestReport(Identity(), data, tmp_path).run()
    assert result["metrics"]["mae"] == pytest.approx(5.0)  # 0.5 x target_std
    assert result["missing_views"]["main_metric"] == "r2"
    assert result["missing_views"]["shapley"]["b"] == pytest.approx(0.0)


def test_missing_checkpoint_is_an_error_when_required(tmp_path):
    report = VectorTestReport(
        FirstViewOnly(), _data(), tmp_path, checkpoint=tmp_path / "none.pt", require_checkpoint=True
    )
    with pytest.raises(FileNotFoundError, match="none.pt does not exist"):
        report.run()
