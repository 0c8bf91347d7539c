"""The same seed twice gives identical results on CPU: metrics.json and the selected weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow

ROOT = Path(__file__).resolve().parents[2]


def _metrics(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("source")  # names the run's own checkpoint path
    return metrics


def _same_weights(a: Path, b: Path) -> None:
    sa, sb = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    for part in ("network", "heads"):
        assert sa[part].keys() == sb[part].keys()
        for key in sa[part]:
            assert torch.equal(sa[part][key], sb[part][key]), f"{part}.{key}"


def test_multiview_bundle_is_deterministic(tmp_path):
    runs = []
    for name in ("a", "b"):
        config = str(ROOT / "bundles" / "multiview_cggm.json")
        root = str(tmp_path / name)
        workflow = ConfigWorkflow(
            config_file=config, workflow_type="train", bundle_root=root, dataset="breast_cancer", epochs=3
        )
        workflow.initialize()
        workflow.run()
        workflow.finalize()
        runs.append(tmp_path / name / "runs" / "multiview_breast_cancer_joint_robust")
    assert _metrics(runs[0]) == _metrics(runs[1])
    _same_weights(runs[0] / "models" / "model.pt", runs[1] / "models" / "model.pt")


@pytest.mark.slow
def test_brats_bundle_is_deterministic(tmp_path):
    env = dict(os.environ, CGGM_SEG_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    runs = []
    for name in ("a", "b"):
        command = [sys.executable, "-m", "monai.bundle", "run", "--config_file"]
        command += [str(ROOT / "bundles" / "brats_cggm.json"), "--bundle_root", str(tmp_path / name)]
        command += [
            "--phantom#cases",
            "4",
            "--phantom#spacing",
            "4.0",
            "--epochs",
            "2",
            "--val_interval",
            "1",
        ]
        command += ["--roi_size", "[32,32,32]"]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(tmp_path / name / "runs" / "brats_joint_robust")
    assert _metrics(runs[0]) == _metrics(runs[1])  # every figure, every case, the audit, the heads
    _same_weights(runs[0] / "models" / "model.pt", runs[1] / "models" / "model.pt")
    a, b = (
        torch.load(r / "models" / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
        for r in runs
    )
    assert a["balancing"]["history"] == b["balancing"]["history"]  # the coefficients, iteration by iteration
