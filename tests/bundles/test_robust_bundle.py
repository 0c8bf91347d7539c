"""The BraTS bundle with a robust-training recipe: trains, names its run, and builds the masking network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser, ConfigWorkflow

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "bundles" / "brats_cggm.json")
META = str(ROOT / "bundles" / "metadata.json")
TINY = {"epochs": 1, "val_interval": 1, "roi_size": [32, 32, 32], "phantom#cases": 4, "phantom#spacing": 4.0}


@pytest.mark.slow
def test_the_robust_recipe_trains_in_the_bundle_and_its_run_carries_its_name(tmp_path, monkeypatch):
    monkeypatch.setenv("CGGM_SEG_CACHE", str(tmp_path))
    workflow = ConfigWorkflow(
        config_file=CONFIG,
        meta_file=META,
        workflow_type="train",
        bundle_root=str(tmp_path),
        recipe="robust",
        **TINY,
    )
    workflow.initialize()
    workflow.run()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    for term in ("robust_full", "robust_subset", "robust_distill", "robust_sep"):
        assert hasattr(trainer.state, term), term
    network = workflow.parser.get_parsed_content("network")
    assert network.mask_missing
    run_dir = tmp_path / "runs" / "brats_joint_robust"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics["missing_sequences"]["subsets"]) == 15


def test_the_default_is_joint_training_with_the_robust_recipe():
    parser = ConfigParser()
    parser.read_config(CONFIG)
    parser.update({"device": "$torch.device('cpu')"})
    assert (parser.get_parsed_content("method"), parser.get_parsed_content("recipe")) == ("joint", "robust")
    recipe = parser.get_parsed_content("robust")
    assert (recipe.sampler, recipe.full_view, recipe.subset_views, recipe.feature_masking) == (
        "uniform",
        True,
        4,
        True,
    )
    assert all(not head.detach for head in parser.get_parsed_content("sep_heads").values())
    assert parser.get_parsed_content("network").mask_missing is True


def test_recipe_none_leaves_the_network_and_step_as_before():
    parser = ConfigParser()
    parser.read_config(CONFIG)
    parser.update({"device": "$torch.device('cpu')", "recipe": "none"})
    assert parser.get_parsed_content("robust") is None
    assert parser.get_parsed_content("sep_heads") is None
    assert parser.get_parsed_content("network").mask_missing is False
    assert parser.get_parsed_content("train#trainer#iteration_update") is None


def test_an_unknown_recipe_is_refused_naming_the_choices():
    parser = ConfigParser()
    parser.read_config(CONFIG)
    parser.update({"recipe": "robustest"})
    with pytest.raises(Exception) as raised:  # MONAI wraps it: "Failed to evaluate"
        parser.get_parsed_content("robust")
    chain, error = [], raised.value
    while error is not None:
        chain.append(error)
        error = error.__cause__
    assert any(
        isinstance(e, ValueError)
        and "recipe must be one of ['none', 'robust', 'sep'], got 'robustest'" in str(e)
        for e in chain
    ), chain
