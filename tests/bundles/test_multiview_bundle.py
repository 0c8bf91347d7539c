"""The multi-view classification / regression bundle: model-zoo properties, and short runs of every
shipped dataset and of the aligned-feature format through the same balancing handlers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigWorkflow, verify_metadata

from cggm_seg.apps.multiview.aligned import synthetic_aligned_features, write_aligned_features
from cggm_seg.apps.multiview.arrays import write_view_file
from cggm_seg.balancing import CGGM, OGMGE, HeadMonitor
from cggm_seg.errors import root_cause
from cggm_seg.handlers import BalancingHandler

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "bundles" / "multiview_cggm.json")
META = str(ROOT / "bundles" / "multiview_metadata.json")
METHODS = {"cggm": CGGM, "ogmge": OGMGE, "joint": HeadMonitor}


def _workflow(tmp_path, **overrides):
    return ConfigWorkflow(
        config_file=CONFIG, meta_file=META, workflow_type="train", bundle_root=str(tmp_path), **overrides
    )


def test_metadata_verifies(tmp_path):
    verify_metadata(meta_file=META, filepath=str(ROOT / "bundles" / "meta_schema.json"))


@pytest.mark.parametrize("dataset", ["digits", "breast_cancer", "diabetes"])
def test_model_zoo_properties(tmp_path, dataset):
    workflow = _workflow(tmp_path, dataset=dataset)
    workflow.initialize()
    assert workflow.check_properties() == []


@pytest.mark.parametrize(
    "dataset, method, views, main",
    [
        ("digits", "cggm", ["top_left", "top_right", "bottom_left", "bottom_right"], "accuracy"),
        ("breast_cancer", "joint", ["mean", "error", "worst"], "accuracy"),
        ("diabetes", "ogmge", ["clinical", "serum"], "r2"),
    ],
)
def test_shipped_datasets_train_and_report(tmp_path, dataset, method, views, main):
    workflow = _workflow(tmp_path, dataset=dataset, method=method, recipe="none", epochs=2)
    workflow.initialize()
    handler = workflow.parser.get_parsed_content("balancing")
    assert isinstance(handler, BalancingHandler) and isinstance(handler.method, METHODS[method])
    workflow.run()
    run = tmp_path / "runs" / f"multiview_{dataset}_{method}"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"] == dataset and list(metrics["heads"]) == views
    assert main in metrics["metrics"] and all(main in m for m in metrics["heads"].values())
    audit = metrics["missing_views"]
    assert audit["main_metric"] == main and len(audit["subsets"]) == 2 ** len(views) - 1
    full = audit["subsets"][-1][main]
    assert full == pytest.approx(metrics["metrics"][main])
    assert sum(audit["shapley"].values()) == pytest.approx(full - audit["empty"])
    assert "best-on-validation checkpoint" in metrics["source"]
    for name in ("metrics.csv", "missing_views.png", "shapley.png", "balance.png", "validation.csv"):
        assert (run / name).is_file(), name
    workflow.finalize()


@pytest.mark.parametrize("dataset, main", [("mosi", "r2"), ("iemocap", "accuracy")])
def test_aligned_features_train_with_a_sequence_encoder(tmp_path, dataset, main):
    pickle = write_aligned_features(tmp_path / "data" / f"{dataset}.pkl", synthetic_aligned_features(dataset))
    workflow = _workflow(tmp_path, dataset=dataset, dataset_dir=str(pickle.parent), epochs=2)  # the default
    workflow.initialize()
    assert workflow.parser.get_parsed_content("encoder") == "gru"
    workflow.run()
    metrics = json.loads(
        (tmp_path / "runs" / f"multiview_{dataset}_joint_robust" / "metrics.json").read_text()
    )
    assert list(metrics["heads"]) == ["text", "audio", "vision"]
    if dataset == "mosi":
        assert {"mae", "corr", "acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc7"} <= set(
            metrics["metrics"]
        )
    else:
        assert {"accuracy", "f1_weighted"} <= set(metrics["metrics"])
    assert metrics["missing_views"]["main_metric"] == main and len(metrics["missing_views"]["subsets"]) == 7
    workflow.finalize()


def test_unknown_dataset_fails_when_the_config_is_parsed(tmp_path):
    workflow = _workflow(tmp_path, dataset="iris")
    with pytest.raises(RuntimeError) as raised:
        workflow.parser.get_parsed_content("data")
    assert "unknown dataset 'iris'" in str(raised.value.__cause__)


def test_your_own_npz_trains_under_its_own_name_with_an_mlp(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(90) % 3
    views = {"clinic": rng.normal(size=(90, 3)) + y[:, None], "blood": rng.normal(size=(90, 5))}
    file = write_view_file(tmp_path / "data" / "my_cohort.npz", views, y)
    workflow = _workflow(tmp_path, dataset=str(file), epochs=2)
    workflow.initialize()
    assert workflow.parser.get_parsed_content("encoder") == "mlp"
    workflow.run()
    metrics = json.loads(
        (tmp_path / "runs" / "multiview_my_cohort_joint_robust" / "metrics.json").read_text()
    )
    assert metrics["dataset"] == "my_cohort" and list(metrics["heads"]) == ["clinic", "blood"]
    assert len(metrics["missing_views"]["subsets"]) == 3
    workflow.finalize()


@pytest.mark.parametrize("method", ["joint", "mmpareto"])
def test_the_robust_recipe_trains_the_multiview_bundle(tmp_path, method):
    workflow = _workflow(tmp_path, dataset="breast_cancer", method=method, recipe="robust", epochs=2)
    workflow.initialize()
    network = workflow.parser.get_parsed_content("network")
    step = workflow.parser.get_parsed_content("robust_step")
    assert network.mask_missing and step.recipe.distill == "softmax_kl" and step.sep_heads is not None
    workflow.run()
    run = tmp_path / "runs" / f"multiview_breast_cancer_{method}_robust"
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["missing_views"]["subsets"]) == 7
    assert [round(row["epoch"]) for row in step.history] == [1, 2]
    assert {"robust_full", "robust_subset", "robust_distill", "robust_sep"} <= set(step.history[0])
    workflow.finalize()


def test_an_encoder_that_does_not_read_the_data_fails_before_training(tmp_path):
    rng = np.random.default_rng(0)
    file = write_view_file(tmp_path / "seq.npz", {"a": rng.normal(size=(30, 4, 2))}, np.arange(30) % 2)
    workflow = _workflow(tmp_path, dataset=str(file), encoder="mlp")
    with pytest.raises(RuntimeError) as raised:
        workflow.parser.get_parsed_content("initialize")
    assert "encoder 'mlp' reads vectors N x D, but the views are sequences (18, 4, 2)" in str(
        raised.value.__cause__
    )
    workflow = _workflow(tmp_path, dataset="digits", encoder="gru")
    with pytest.raises(RuntimeError) as raised:
        workflow.parser.get_parsed_content("initialize")
    assert "encoder 'gru' reads sequences N x T x D, but the views are vectors" in str(raised.value.__cause__)


def test_mmpareto_needs_per_view_heads_and_the_sep_recipe_gives_them(tmp_path):
    workflow = _workflow(tmp_path, dataset="breast_cancer", method="mmpareto", recipe="none", epochs=1)
    workflow.initialize()
    with pytest.raises(RuntimeError) as refused:
        workflow.run()
    assert "--method mmpareto --recipe sep" in str(root_cause(refused.value))
    workflow = _workflow(tmp_path / "sep", dataset="breast_cancer", method="mmpareto", recipe="sep", epochs=1)
    workflow.initialize()
    workflow.run()
    assert (tmp_path / "sep" / "runs" / "multiview_breast_cancer_mmpareto_sep" / "metrics.json").is_file()
    workflow.finalize()
