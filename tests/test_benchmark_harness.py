"""The benchmark harness: every variant is a configuration the bundle parses, and the results page
is what the committed results render to."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import render_results  # noqa: E402
from variants import MULTIVIEW_VARIANTS, VARIANTS  # noqa: E402


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_brats_variant_picks_its_method_through_the_bundle(name):
    variant = VARIANTS[name]
    parser = ConfigParser()
    parser.read_config([str(variant.bundle), *(str(ROOT / "bundles" / f) for f in variant.files)])
    for key, value in variant.overrides.items():
        parser[key] = value
    method = parser.get_parsed_content("balancing_method")
    expected = parser["method"]
    assert (method is None) == (expected == "none")
    if method is not None:
        assert method.name == expected


@pytest.mark.parametrize("name", sorted(MULTIVIEW_VARIANTS))
def test_every_multiview_variant_names_a_method_of_its_bundle(name):
    variant = MULTIVIEW_VARIANTS[name]
    parser = ConfigParser()
    parser.read_config(str(variant.bundle))
    for key, value in variant.overrides.items():
        parser[key] = value
    assert parser["method"] in parser["methods"]


@pytest.mark.parametrize("page", ["results.md", "archive.md"])
def test_the_results_pages_are_what_the_results_render_to(page):
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render_results.py"), "--check", "--doc", f"docs/{page}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_missing_marker_is_refused_and_nothing_else_changes():
    page = "intro\n<!-- results:balance:begin -->\nold\n"
    with pytest.raises(ValueError, match="balance"):
        render_results.fill(page, "balance", "new table")
    filled = render_results.fill(page + "<!-- results:balance:end -->\nprose\n", "balance", "new table")
    assert filled.startswith("intro\n") and filled.endswith("<!-- results:balance:end -->\nprose\n")
    assert "new table" in filled and "old" not in filled


def test_retired_rows_keep_only_variants_no_longer_defined(tmp_path):
    import bench_balance

    earlier = tmp_path / "balance_robust.json"
    rows = {"joint": {"seeds": [0]}, "gone_variant": {"seeds": [0], "metrics": {}}}
    data = {"benchmark": "bench_balance", "source": "runs of a day", "variants": rows}
    earlier.write_text(json.dumps(data))
    kept = bench_balance.retired_rows(earlier)
    assert list(kept) == ["gone_variant"]
    assert kept["gone_variant"]["retired"] == "variant retired; row kept from: runs of a day"
    assert bench_balance.retired_rows(tmp_path / "none.json") == {}


def test_the_results_page_and_the_archive_split_a_benchmarks_rows():
    data = {"variants": {"joint": 1, "cggm": 2, "cggm_paper": 3, "moddrop": 4}}
    main = render_results.select_rows(data, "balance")["variants"]
    more = render_results.select_rows(data, "balance_more")["variants"]
    assert list(main) == ["joint", "cggm", "moddrop"] and list(more) == ["joint", "cggm_paper"]
    nested = {"datasets": {"mfeat": {"views": ["a"], "variants": {"joint": 1, "robust": 2, "cggm_paper": 3}}}}
    assert list(render_results.select_rows(nested, "mfeat_more")["datasets"]["mfeat"]["variants"]) == [
        "joint",
        "cggm_paper",
    ]
    assert render_results.select_rows(data, "overhead") is data  # no main rows: every row


def test_the_guided_experiment_weights_by_hand():
    import torch
    from guided_recipe import GuidedStep, lag

    from cggm_seg.balancing import HeadMonitor, RobustTraining

    # scores 0.5 and 0.25: inverses 2 and 4, mean 3 -> the lagging view 4/3, the other 2/3
    assert lag(torch.tensor([0.5, 0.25])).tolist() == pytest.approx([2 / 3, 4 / 3])
    recipe = RobustTraining(full_view=True, sep_weight=0.5)
    heads = {"a": torch.nn.Linear(2, 2), "b": torch.nn.Linear(2, 2)}
    method = HeadMonitor()
    step = GuidedStep(recipe, heads, method, guide="sep", momentum=0.5)
    step.modalities = ("a", "b")
    method.stats = {"eps_a": 0.5, "eps_b": 0.25}
    assert step._sep_weights() == pytest.approx({"a": 1 / 3, "b": 2 / 3})
    method.stats = {"eps_a": 0.5, "eps_b": 0.75}  # running mean (0.5, 0.5): no lag left
    assert step._sep_weights() == pytest.approx({"a": 0.5, "b": 0.5})
    drop = GuidedStep(recipe, heads, method, guide="drop")
    drop.modalities = ("a", "b")
    method.stats = {"eps_a": 0.8, "eps_b": 0.2}  # inverses 1.25 and 5: r = (0.4, 1.6)
    # drop / r = (1.25, 0.3125), the first clipped to 0.95
    assert drop._drop_probabilities().tolist() == pytest.approx([0.95, 0.3125])
