"""The BraTS bundles: model-zoo properties, metadata, network I/O, export, and tiny end-to-end runs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out

from cggm_seg.apps.brats.phantom import PhantomConfig, write_phantom_dataset

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = ROOT / "bundles"
METHODS = ("cggm", "joint", "ogmge")
META = str(BUNDLES / "metadata.json")
TINY = [
    "--epochs", "1",
    "--val_interval", "1",
    "--roi_size", "[32,32,32]",
    "--phantom#cases", "4",
    "--phantom#spacing", "4.0",
]  # fmt: skip


CONFIG = str(BUNDLES / "brats_cggm.json")
#: the baselines whose network differs: override files on the experiment
VARIANTS = ("early_fusion", "unimodal")


def _config(method: str = "cggm") -> str | list[str]:
    return [CONFIG, str(BUNDLES / f"{method}.json")] if method in VARIANTS else CONFIG


def _method_args(method: str) -> list[str]:
    """The method without the bundle's default recipe: each method's own training step."""
    return [] if method in VARIANTS else ["--method", method, "--recipe", "none"]


@pytest.mark.parametrize("method", [*METHODS, *VARIANTS])
def test_model_zoo_properties(method, tmp_path, monkeypatch):
    monkeypatch.setenv("CGGM_SEG_CACHE", str(tmp_path))  # MONAI's check parses the datasets: tiny ones
    tiny = {
        "phantom#cases": 3,
        "phantom#spacing": 4.0,
        "roi_size": [32, 32, 32],
        "bundle_root": str(tmp_path),
    }
    if method not in VARIANTS:
        tiny["method"] = method
    workflow = ConfigWorkflow(config_file=_config(method), meta_file=META, workflow_type="train", **tiny)
    workflow.initialize()
    assert workflow.check_properties() == []
    handlers = workflow.parser.get_parsed_content("train#trainer#train_handlers")
    balancing = workflow.parser.get_parsed_content("balancing")
    assert (balancing is None) == (method in VARIANTS)
    assert (balancing in handlers) if balancing is not None else all(h is not None for h in handlers)


def test_method_bundles_are_short():
    # the experiment is defined once; each method is a key or a few lines on top of it
    lines = sum(
        len((BUNDLES / f).read_text().splitlines())
        for f in ["brats_cggm.json"] + [f"{v}.json" for v in VARIANTS]
    )
    assert lines < 400


def test_unknown_method_fails_when_the_config_is_parsed(tmp_path, monkeypatch):
    monkeypatch.setenv("CGGM_SEG_CACHE", str(tmp_path))
    tiny = {
        "phantom#cases": 3,
        "phantom#spacing": 4.0,
        "roi_size": [32, 32, 32],
        "bundle_root": str(tmp_path),
        "method": "cgmm",
    }
    workflow = ConfigWorkflow(config_file=CONFIG, meta_file=META, workflow_type="train", **tiny)
    with pytest.raises(RuntimeError) as raised:  # MONAI wraps the error of the expression
        workflow.parser.get_parsed_content("balancing")
    assert "method must be one of" in str(raised.value.__cause__)


def test_heads_as_the_balancing_benchmark_chose_them():
    """docs/archive.md: CGGM and the joint monitor on half-resolution heads; OGM-GE on
    full-resolution heads trained every 4th iteration on one voxel in 8 (a sub-lattice)."""
    from monai.bundle import ConfigParser

    chosen = {}
    for method in METHODS:
        parser = ConfigParser()
        parser.read_config(CONFIG)
        parser["method"] = method
        heads = parser.get_parsed_content("heads")
        chosen[method] = {h.level for h in heads.values()}
        handler = parser.get_parsed_content("balancing")
        chosen[method, "every"] = getattr(handler.method, "observe_every", 1)
        chosen[method, "sublattice"] = handler.method.head_options.sublattice
    assert chosen == {
        "cggm": {1}, "joint": {1}, "ogmge": {0},
        ("cggm", "every"): 1, ("joint", "every"): 1, ("ogmge", "every"): 4,
        ("cggm", "sublattice"): False, ("joint", "sublattice"): False, ("ogmge", "sublattice"): True,
    }  # fmt: skip


def test_gpu_paper_builds_no_cpu_fast_path():
    from monai.bundle import ConfigParser

    from cggm_seg.networks.depth_split import DepthSplitConv3d
    from cggm_seg.networks.pointwise import PointwiseConv3d

    parser = ConfigParser()
    parser.read_config([CONFIG, str(BUNDLES / "gpu_paper.json")])
    net = parser.get_parsed_content("network_def")
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs and all(type(m) is torch.nn.Conv3d for m in convs)
    parser = ConfigParser()
    parser.read_config(CONFIG)  # the CPU default sets them
    net = parser.get_parsed_content("network_def")
    assert any(isinstance(m, DepthSplitConv3d) for m in net.modules())
    assert any(isinstance(m, PointwiseConv3d) for m in net.modules())


def test_verify_metadata_offline_with_the_shipped_schema():
    verify_metadata(meta_file=META, filepath=str(BUNDLES / "meta_schema.json"))


def test_metadata_rejected_when_a_required_field_is_missing(tmp_path):
    meta = json.loads(Path(META).read_text())
    del meta["network_data_format"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="network_data_format"):
        verify_metadata(meta_file=str(bad), filepath=str(BUNDLES / "meta_schema.json"))


def test_verify_net_in_out():
    verify_net_in_out(net_id="network_def", meta_file=META, config_file=_config("cggm"), n=4, device="cpu")


def test_ckpt_export_torchscript(tmp_path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(_config("cggm"))
    net = parser.get_parsed_content("network_def")
    ckpt = tmp_path / "model.pt"
    torch.save({"network": net.state_dict()}, ckpt)
    ts = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts),
        ckpt_file=str(ckpt),
        meta_file=META,
        config_file=_config("cggm"),
        key_in_ckpt="network",
    )
    scripted = torch.jit.load(str(ts))
    x = torch.randn(1, 4, 32, 32, 32)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=1e-4, atol=1e-5)


def _run_bundle(
    config: str | list[str], root: Path, *extra: str, timeout: int = 600
) -> subprocess.CompletedProcess:
    env = dict(os.environ, CGGM_SEG_CACHE=str(root / "cache"), PYTHONUNBUFFERED="1")
    config = str(config) if isinstance(config, list) else config
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, "--bundle_root", str(root)]
    return subprocess.run(
        [*cmd, *TINY, *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _assert_metrics(run_dir: Path, heads: bool = True) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_cases"] >= 1
    for key in ("dice_tc", "dice_wt", "dice_et", "dice_mean", "hd95_tc", "hd95_wt", "hd95_et"):
        value = metrics["summary"][key]["mean"]
        assert math.isfinite(value), key
        if key.startswith("dice"):
            assert 0.0 <= value <= 1.0
    if heads:
        for modality in ("t1", "t1ce", "t2", "flair"):
            assert math.isfinite(metrics["summary"][f"head_dice_{modality}_mean"]["mean"])
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("case_id,") and len(rows) == metrics["num_cases"] + 1
    if heads:
        assert (run_dir / "balance.png").stat().st_size > 5000
    return metrics


@pytest.fixture(scope="module")
def cggm_tiny_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """(bundle root, result) of one tiny run of the default bundle, shared by the tests that need one."""
    root = tmp_path_factory.mktemp("cggm_tiny")
    return root, _run_bundle(_config("cggm"), root)


@pytest.mark.slow
def test_the_default_bundle_end_to_end_tiny(cggm_tiny_run):
    root, result = cggm_tiny_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = root / "runs" / "brats_joint_robust"
    _assert_metrics(run_dir, heads=True)
    assert (run_dir / "models" / "model.pt").is_file()
    assert "Dice (fused)" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "layout"),
    [("joint", "brats2023"), ("ogmge", "msd"), ("early_fusion", None), ("unimodal", None)],
)
def test_bundle_end_to_end_tiny(method, layout, tmp_path):
    """Each bundle trains, validates and evaluates; the non-default layouts come in via --dataset_dir."""
    extra: list[str] = []
    if layout is not None:
        data = tmp_path / f"data_{layout}"
        write_phantom_dataset(
            data, 4, seed=1, layout=layout, config=PhantomConfig(spacing=4.0), progress=False
        )
        extra = ["--dataset_dir", str(data)]
    result = _run_bundle(_config(method), tmp_path, *_method_args(method), *extra)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    variant = "unimodal_t2" if method == "unimodal" else method
    run_dir = tmp_path / "runs" / (f"brats_data_{layout}_{variant}" if layout else f"brats_{variant}")
    _assert_metrics(run_dir, heads=method not in VARIANTS)
    assert (run_dir / "models" / "model.pt").is_file()
    assert "Dice (fused)" in result.stdout
    if layout is not None:
        assert json.loads((run_dir / "datalist.json").read_text())["layout"] == layout


@pytest.mark.slow
def test_bundle_stops_with_the_check_report_on_bad_data(tmp_path):
    data = tmp_path / "data"
    write_phantom_dataset(data, 3, seed=2, config=PhantomConfig(spacing=4.0), progress=False)
    victim = sorted(data.rglob("*_flair.nii.gz"))[0]
    victim.unlink()
    result = _run_bundle(_config("cggm"), tmp_path, "--dataset_dir", str(data))
    assert result.returncode != 0
    assert victim.name in result.stdout + result.stderr
    assert "nothing was trained" in result.stdout + result.stderr
    assert not (tmp_path / "runs" / "brats_joint_robust" / "models").exists()


@pytest.mark.slow
def test_evaluate_bundle_audits_a_checkpoint_on_another_dataset(cggm_tiny_run, tmp_path):
    """Audit the tiny run's checkpoint on every case of a BraTS 2023 folder: no training, the
    15-subset audit and Shapley values in evaluation/."""
    import shutil

    trained_root, trained = cggm_tiny_run
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    shutil.copytree(trained_root / "runs", tmp_path / "runs")
    run_dir = tmp_path / "runs" / "brats_joint_robust"
    data = tmp_path / "other"
    write_phantom_dataset(
        data, 3, seed=5, layout="brats2023", config=PhantomConfig(spacing=4.0), progress=False
    )
    evaluate = [CONFIG, str(BUNDLES / "evaluate.json")]
    extra = ["--dataset_dir", str(data), "--evaluate_split", "all"]
    result = _run_bundle(evaluate, tmp_path, *extra, "--run_name", "brats_joint_robust")  # the trained run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Epoch[1]" not in result.stdout + result.stderr  # nothing trained
    metrics = json.loads((run_dir / "evaluation" / "metrics.json").read_text())
    assert metrics["num_cases"] == 3 and "best-on-validation checkpoint" in metrics["source"]
    audit = metrics["missing_sequences"]
    assert len(audit["subsets"]) == 15
    full = audit["subsets"][-1]["dice_mean"]
    assert sum(audit["shapley"].values()) == pytest.approx(full)
    assert (run_dir / "evaluation" / "shapley.png").is_file()
    missing = _run_bundle(evaluate, tmp_path, *extra, "--checkpoint", str(tmp_path / "nope.pt"))
    assert missing.returncode != 0 and "nope.pt does not exist" in missing.stdout + missing.stderr


def test_the_multiview_bundle_keeps_the_brats_bundles_handler_sets():
    """The two bundles hold the same handler sets (MONAI's ``%file#key`` macro reads a path relative
    to the working directory, so each bundle carries its own copy), checkpoint and run definition
    included: both save the robust-training step and per-sequence heads."""
    brats = json.loads((BUNDLES / "brats_cggm.json").read_text())
    multiview = json.loads((BUNDLES / "multiview_cggm.json").read_text())
    for section in ("train", "validate"):
        ours, theirs = brats[section]["handler_set"], multiview[section]["handler_set"]
        assert list(ours) == list(theirs), section
        for key in ours:
            assert ours[key] == theirs[key], (section, key)
