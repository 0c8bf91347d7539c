"""The missing-sequence audit: subsets, exact Shapley values, and the audit inside the test report."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from monai.inferers import SimpleInferer

from cggm_seg.apps.brats import SegmentationTestReport
from cggm_seg.evaluation import sequence_subsets, shapley_values, subset_name
from tests.evaluation.test_report import RegionsFromImage, _cases


def test_subsets_are_every_non_empty_combination_smallest_first():
    subsets = sequence_subsets(["t1", "t1ce", "t2", "flair"])
    assert len(subsets) == 15 and len(set(subsets)) == 15
    assert subsets[:4] == [("t1",), ("t1ce",), ("t2",), ("flair",)]
    assert subsets[-1] == ("t1", "t1ce", "t2", "flair")
    assert [len(s) for s in subsets] == sorted(len(s) for s in subsets)
    assert subset_name(("t1", "flair")) == "t1+flair"
    with pytest.raises(ValueError, match="distinct"):
        sequence_subsets(["t1", "t1"])


def test_shapley_against_hand_computed_values():
    # v(a)=1 v(b)=2 v(c)=0 v(ab)=4 v(ac)=1 v(bc)=2 v(abc)=6, v(empty)=0; weights 1/3, 1/6, 1/6, 1/3:
    # phi_a = 1/3*1 + 1/6*(4-2) + 1/6*(1-0) + 1/3*(6-2) = 13/6
    # phi_b = 1/3*2 + 1/6*(4-1) + 1/6*(2-0) + 1/3*(6-1) = 19/6
    # phi_c = 1/3*0 + 1/6*(1-1) + 1/6*(2-2) + 1/3*(6-4) = 4/6
    v = {"a": 1, "b": 2, "c": 0, "ab": 4, "ac": 1, "bc": 2, "abc": 6}
    game = {frozenset(k): float(x) for k, x in v.items()}
    phi = shapley_values(game, ["a", "b", "c"])
    assert phi == pytest.approx({"a": 13 / 6, "b": 19 / 6, "c": 4 / 6})


def test_shapley_efficiency_symmetry_dummy_and_additivity():
    g = torch.Generator().manual_seed(0)
    players = ["t1", "t1ce", "t2", "flair"]
    game = {frozenset(s): float(torch.rand(1, generator=g)) for s in sequence_subsets(players)}
    phi = shapley_values(game, players)
    assert sum(phi.values()) == pytest.approx(game[frozenset(players)])  # v(all) - v(empty)
    assert sum(shapley_values(game, players, empty=0.25).values()) == pytest.approx(
        game[frozenset(players)] - 0.25
    )
    # a game that ignores flair and treats t1 and t2 alike
    weights = {"t1": 0.2, "t1ce": 0.5, "t2": 0.2, "flair": 0.0}
    additive = shapley_values(lambda s: sum(weights[p] for p in s) + 0.1 * ("t1" in s and "t2" in s), players)
    assert additive["flair"] == pytest.approx(0.0)
    assert additive["t1"] == pytest.approx(additive["t2"]) == pytest.approx(0.25)
    assert additive["t1ce"] == pytest.approx(0.5)
    with pytest.raises(KeyError):
        shapley_values({frozenset(["t1"]): 1.0}, ["t1", "t2"])


def test_report_audits_every_subset_with_exact_contributions(tmp_path):
    """A model whose TC, WT and ET come from image channels 0, 1, 2 (t1, t1ce, t2) and ignores
    channel 3 (flair): a subset's mean Dice is the share of those three present, so every
    contribution is known exactly: 1/3, 1/3, 1/3 and 0."""
    result = SegmentationTestReport(
        RegionsFromImage(), _cases(2), SimpleInferer(), tmp_path, hd95=False
    ).run()
    audit = result["missing_sequences"]
    assert [row["name"] for row in audit["subsets"]] == [
        subset_name(s) for s in sequence_subsets(audit["sequences"])
    ]
    for row in audit["subsets"]:
        used = [s for s in row["sequences"] if s != "flair"]
        assert row["dice_mean"] == pytest.approx(len(used) / 3)
        assert row["dice_tc"] == pytest.approx(float("t1" in row["sequences"]))
    assert audit["shapley"] == pytest.approx({"t1": 1 / 3, "t1ce": 1 / 3, "t2": 1 / 3, "flair": 0.0})
    expected_mean = (
        sum(len([s for s in c if s != "flair"]) / 3 for c in sequence_subsets(audit["sequences"])) / 15
    )
    assert audit["subset_mean"] == pytest.approx(expected_mean)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["missing_sequences"]["shapley"] == audit["shapley"]
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "subset_t1+flair_dice_mean" in header and "subset_t2_dice_et" in header
    for png in ("missing_sequences.png", "shapley.png"):
        assert (tmp_path / png).stat().st_size > 5000


def test_report_without_audit_and_with_named_sequences(tmp_path):
    result = SegmentationTestReport(
        RegionsFromImage(), _cases(1), SimpleInferer(), tmp_path, audit=False
    ).run()
    assert "missing_sequences" not in result and not (tmp_path / "shapley.png").exists()
    with pytest.raises(ValueError, match="give `sequences`"):
        SegmentationTestReport(
            RegionsFromImage(), _cases(1), SimpleInferer(), tmp_path, sequences=["t1", "t2"]
        ).run()


def test_all_fifteen_coalitions_enter_the_shapley_value():
    players = ["t1", "t1ce", "t2", "flair"]
    seen = []
    shapley_values(lambda s: seen.append(s) or float(len(s)), players)
    assert {frozenset(c) for n in range(1, 5) for c in itertools.combinations(players, n)} == set(seen)
