"""bundles/multi_gpu_train.json: the BraTS bundles under torchrun, on CPU with gloo.

Two ranks train one epoch of the CGGM bundle on a tiny phantom; each rank's StatsHandler logs its
balancing state, and the two ranks must log the same eps and B (the heads' scores are averaged
over ranks), a real, non-neutral B.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import ignite.distributed as idist
import pytest
import torch
import torch.distributed as dist
from monai.bundle import ConfigWorkflow
from torch.utils.data import DistributedSampler

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
STATE_LINE = re.compile(r" - train_rank(\d+) - INFO - State values: (.*)$")


def _torchrun_available() -> bool:
    try:
        import torch.distributed.run  # noqa: F401
    except ImportError:
        return False
    return dist.is_available() and dist.is_gloo_available()


def test_overrides_name_handlers_that_exist():
    # multi_gpu_train.json names the handlers it replaces or disables by key: every key must be
    # a handler of the base bundle, of the kind the override expects.
    base = json.loads((BUNDLES / "brats_cggm.json").read_text())
    override = json.loads((BUNDLES / "multi_gpu_train.json").read_text())
    named = [k for k in override if "#handler_set#" in k]
    assert len(named) == 5
    for key in named:
        section, _, name = key.split("#")[:3]
        assert name in base[section]["handler_set"], key
    assert base["train"]["handler_set"]["stats"]["_target_"] == "StatsHandler"
    assert override["train#handler_set#stats"]["_target_"] == "StatsHandler"
    assert base["train"]["handler_set"]["tensorboard"]["_target_"] == "TensorBoardStatsHandler"
    assert base["validate"]["handler_set"]["stats"]["_target_"] == "StatsHandler"
    assert not any("handlers#" in k for k in override), "an override by list position is back"


def test_model_zoo_properties_with_one_rank(tmp_path, monkeypatch):
    # torchrun's environment for a world of one: initialize() opens a gloo group, finalize() closes it.
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(key, value)
    # port 0: rank 0's store listens on a port the OS gives it (a world of one: nobody else connects),
    # never on one found free earlier, which another process could take in between
    monkeypatch.setenv("MASTER_PORT", "0")
    monkeypatch.setenv("CGGM_SEG_CACHE", str(tmp_path))
    workflow = ConfigWorkflow(
        config_file=[str(BUNDLES / "brats_cggm.json"), str(BUNDLES / "multi_gpu_train.json")],
        meta_file=str(BUNDLES / "metadata.json"),
        workflow_type="train",
        **{
            "phantom#cases": 3,
            "phantom#spacing": 4.0,
            "roi_size": [32, 32, 32],
            "bundle_root": str(tmp_path),
        },
    )
    workflow.initialize()
    try:
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        assert workflow.check_properties() == []
        assert isinstance(workflow.trainer.network, torch.nn.parallel.DistributedDataParallel)
        assert isinstance(workflow.trainer.data_loader.sampler, DistributedSampler)
    finally:
        # Ignite caches the distributed model it detected: reset it with the group, or later tests in
        # this process try to all-gather their metrics in a group that no longer exists.
        idist.finalize()
        workflow.finalize()
    assert not dist.is_initialized()
    assert idist.get_world_size() == 1


@pytest.mark.slow
@pytest.mark.skipif(
    not _torchrun_available(), reason="torch.distributed.run or the gloo backend is unavailable"
)
def test_two_cpu_ranks_train_and_log_identical_balancing(tmp_path):
    config_files = str([str(BUNDLES / "brats_cggm.json"), str(BUNDLES / "multi_gpu_train.json")])
    command = [
        # --standalone: the rendezvous store takes a port from the OS and the ranks are told it
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "--config_file", config_files,
        "--method", "cggm", "--split_fractions", "[0.7,0.15,0.15]",
        "--epochs", "1", "--val_interval", "1", "--roi_size", "[32,32,32]",
        # 6 cases -> 4 training cases, 2 iterations per rank: the second gives a non-neutral B
        # (the first has no delta yet) with the per-iteration 'guarded' preset and tau 0, so that the
        # tiny deltas are not guarded to neutral (the default trend preset waits for its window).
        "--phantom#cases", "6", "--phantom#spacing", "4.0",
        "--methods#cggm#tracker#preset", "guarded", "--methods#cggm#tracker#tau", "0.0",
        "--bundle_root", str(tmp_path / "root"),
    ]  # fmt: skip
    env = {**os.environ, "CGGM_SEG_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]

    states: dict[int, list[dict[str, str]]] = {0: [], 1: []}
    for line in log.splitlines():
        if match := STATE_LINE.search(line):
            states[int(match[1])].append(dict(re.findall(r"(\w+): (\S+)", match[2])))
    assert len(states[0]) == len(states[1]) == 1, log[-4000:]  # one line per rank per epoch
    rank0, rank1 = states[0][0], states[1][0]
    shared = [k for k in rank0 if k.startswith(("eps_", "d_", "B_"))]
    assert len([k for k in shared if k.startswith("B_")]) == 4
    assert {k: rank0[k] for k in shared} == {k: rank1[k] for k in shared}  # the same digits
    assert any(float(rank0[k]) != 1.0 for k in shared if k.startswith("B_"))  # a real, non-neutral B
    assert rank0["head_loss_t1"] != rank1["head_loss_t1"]  # ...from different local batches

    run_dir = tmp_path / "root" / "runs" / "brats_cggm"
    assert (run_dir / "models" / "checkpoint_epoch=1.pt").is_file()
    assert (run_dir / "metrics.json").is_file()
    assert log.count("metrics written to") == 1  # the test-set report runs on rank 0 only
