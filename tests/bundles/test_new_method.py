"""A new balancing method is one class and one registry line; the bundle runs it with no handler code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow

from cggm_seg.balancing import METHODS, BalancingMethod, register_method, scale_gradients

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "bundles" / "brats_cggm.json")
META = str(ROOT / "bundles" / "metadata.json")


class Uniform(BalancingMethod):
    """Every branch at coefficient 1, always: joint training, written as a method."""

    name = "uniform"
    stat_kinds = ("B", "head_loss")
    plot_panels = (("B", "coefficient B_i (always 1)"),)

    def __init__(self, head_options=None) -> None:
        super().__init__("grad", head_options)

    def _observe(self, target: torch.Tensor) -> None:
        seen = self.observer.observe(target)
        self.stats = {f"B_{m}": 1.0 for m in self.modalities}
        self.stats.update(seen.stats)

    def apply_magnitude(self, optimizer=None, epoch: int = 0) -> None:
        scale_gradients(self.params_by_modality, {m: 1.0 for m in self.modalities})


@pytest.fixture
def uniform_registered():
    register_method(Uniform)
    yield
    METHODS.pop("uniform")


@pytest.mark.slow
def test_a_method_added_through_the_registry_alone_trains_in_the_bundle(
    uniform_registered, tmp_path, monkeypatch
):
    monkeypatch.setenv("CGGM_SEG_CACHE", str(tmp_path))
    overrides = {
        "method": "uniform",
        # the one methods#<name> block: the registry's class, built with its settings
        "methods#uniform": "$cggm_seg.balancing.get_method_class('uniform')()",
        "epochs": 1,
        "val_interval": 1,
        "roi_size": [32, 32, 32],
        "phantom#cases": 4,
        "phantom#spacing": 4.0,
        "bundle_root": str(tmp_path),
    }
    workflow = ConfigWorkflow(config_file=CONFIG, meta_file=META, workflow_type="train", **overrides)
    workflow.initialize()
    workflow.run()
    handler = workflow.parser.get_parsed_content("balancing")
    assert isinstance(handler.method, Uniform) and handler.method_key == "uniform"
    assert handler.history and all(h["B_t1"] == 1.0 and h["B_flair"] == 1.0 for h in handler.history)
    run_dir = tmp_path / "runs" / "brats_uniform_robust"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["summary"]["dice_mean"]["mean"] <= 1.0
    assert (run_dir / "balance.png").stat().st_size > 5000


def test_registering_a_taken_name_is_refused(uniform_registered):
    class Other(Uniform):
        pass

    with pytest.raises(ValueError, match="method name 'uniform' is taken by"):
        register_method(Other)
