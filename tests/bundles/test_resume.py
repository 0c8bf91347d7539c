"""A run killed at any point and started again with the same command ends as an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from cggm_seg.apps.brats.phantom import PhantomConfig, write_phantom_dataset
from cggm_seg.errors import root_cause
from cggm_seg.handlers import (
    BestCheckpoint,
    RandomStates,
    ResumableCheckpoint,
    RunDefinitionError,
    atomic_save,
    latest_checkpoint,
)

ROOT = Path(__file__).resolve().parents[2]
HELPERS = Path(__file__).resolve().parent / "helpers"


# -- the bundle, killed mid-epoch ------------------------------------------------------------------


def _command(root: Path) -> list[str]:
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file"]
    command += [str(ROOT / "bundles" / "brats_cggm.json"), "--bundle_root", str(root)]
    command += ["--phantom#cases", "6", "--phantom#spacing", "4.0", "--roi_size", "[32,32,32]"]
    command += ["--epochs", "3", "--val_interval", "1"]
    return command + ["--train#handler_set#kill_at", "$__import__('kill_at').KillAt()"]


def _env(tmp_path: Path, kill_epoch: int | None) -> dict[str, str]:
    env = dict(os.environ, CGGM_SEG_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HELPERS), env.get("PYTHONPATH", "")])
    env.pop("CGGM_SEG_TEST_KILL_EPOCH", None)
    if kill_epoch is not None:
        env["CGGM_SEG_TEST_KILL_EPOCH"] = str(kill_epoch)
    return env


def _metrics(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("source")  # names the run's own checkpoint path
    return metrics


def _assert_same_state(a: dict, b: dict, where: str = "") -> None:
    assert a.keys() == b.keys(), where
    for key in a:
        assert torch.equal(a[key], b[key]), f"{where}{key}"


@pytest.mark.slow
def test_killed_mid_epoch_and_resumed_equals_an_uninterrupted_run(tmp_path):
    # the uninterrupted run (the kill handler is there, but does nothing)
    straight = subprocess.run(
        _command(tmp_path / "a"),
        cwd=ROOT,
        env=_env(tmp_path, None),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert straight.returncode == 0, straight.stderr[-3000:]

    # the same command, killed (SIGKILL) in the middle of epoch 2, then started again as it was
    root = tmp_path / "b"
    killed = subprocess.run(
        _command(root), cwd=ROOT, env=_env(tmp_path, 2), capture_output=True, text=True, timeout=900
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_b = root / "runs" / "brats_joint_robust"
    assert latest_checkpoint(run_b / "models").name == "checkpoint_epoch=1.pt"  # killed during epoch 2
    assert not (run_b / "metrics.json").exists()
    resumed = subprocess.run(
        _command(root), cwd=ROOT, env=_env(tmp_path, None), capture_output=True, text=True, timeout=900
    )
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-3000:]
    assert "resuming from" in log and "checkpoint_epoch=1.pt" in log

    assert "Epoch[2] Complete" in log and "Epoch[1] Complete" not in log  # epoch 1 was not trained again
    assert sorted(p.name for p in (run_b / "models").glob("checkpoint_epoch=*")) == ["checkpoint_epoch=3.pt"]
    run_a = tmp_path / "a" / "runs" / "brats_joint_robust"
    a, b = (torch.load(r / "models" / "checkpoint_epoch=3.pt", weights_only=True) for r in (run_a, run_b))
    _assert_same_state(a["network"], b["network"], "network.")
    assert a["balancing"]["history"] == b["balancing"]["history"]  # B and the scores, iteration by iteration
    _assert_same_state(a["balancing"]["heads"], b["balancing"]["heads"], "heads.")
    assert a["best"] == b["best"] and a["best"]["best_epoch"] >= 1  # the best-on-validation record
    assert a["trainer"] == b["trainer"]
    best_a, best_b = (torch.load(r / "models" / "model.pt", weights_only=True) for r in (run_a, run_b))
    _assert_same_state(best_a["network"], best_b["network"], "model.pt network.")
    assert _metrics(run_a) == _metrics(run_b)  # every test figure, the audit and the heads


# -- one run per folder ----------------------------------------------------------------------------

TINY = ["--phantom#cases", "4", "--phantom#spacing", "4.0", "--roi_size", "[32,32,32]", "--val_interval", "1"]


def _bundle(root: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file"]
    command += [str(ROOT / "bundles" / "brats_cggm.json"), "--bundle_root", str(root), *TINY, *args]
    env = dict(os.environ, CGGM_SEG_CACHE=str(cache), OMP_NUM_THREADS="1")
    env.pop("CGGM_SEG_PLAIN_ERRORS", None)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory) -> tuple[Path, Path]:
    """(bundle root, phantom cache) of the quick start, 1 epoch (``runs/brats_joint_robust``)."""
    root, cache = tmp_path_factory.mktemp("quick_start"), tmp_path_factory.mktemp("cache")
    done = _bundle(root, cache, "--epochs", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    return root, cache


def _copy(quick_start: tuple[Path, Path], tmp_path: Path) -> Path:
    """A bundle root of this test's own, holding a copy of the quick start's run."""
    shutil.copytree(quick_start[0], tmp_path / "root")
    return tmp_path / "root"


def _files(run: Path) -> dict[str, bytes]:
    kept = (run / "models" / "checkpoint_epoch=1.pt", run / "metrics.json", run / "datalist.json")
    return {p.name: p.read_bytes() for p in kept}


#: settings that differ from the quick start's run, and the line the refusal gives for each
CHANGES = {
    "dataset": (["--phantom#cases", "5"], "data: 1 case added (BraTS2021_00004)"),
    "seed": (["--seed", "1"], "seed: 0 -> 1"),
    "recipe setting": (["--recipes#robust#distill_weight", "0.3"], "distill_weight: 0.5 -> 0.3"),
    "learning_rate": (["--learning_rate", "0.02"], "optimizer.lr: 0.01 -> 0.02"),
}


@pytest.mark.slow
def test_a_resume_with_other_data_seed_or_settings_refuses_and_names_the_differences(quick_start, tmp_path):
    """One run that changes the data, the seed, a recipe setting and the optimizer: each is named."""
    args = [a for change, _ in CHANGES.values() for a in change]
    root, cache = _copy(quick_start, tmp_path), quick_start[1]
    run = root / "runs" / "brats_joint_robust"
    before = _files(run)
    done = _bundle(root, cache, "--epochs", "2", *args)  # more epochs alone would resume
    assert done.returncode != 0
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    start = [
        i
        for i, line in enumerate(lines)
        if line.startswith("cggm_seg: the run stopped: RunDefinitionError: ")
    ]
    assert start, lines[-5:]
    report = lines[start[-1] :]
    assert (
        "checkpoint_epoch=1.pt was saved by a run that differs from this one in (saved -> this run):"
        in report[0]
    )
    for name, (_, difference) in CHANGES.items():
        assert any(difference in line for line in report[1:-2]), (name, report)
    assert report[-1].startswith(
        "Start over in this folder with --resume False, or train into another one with"
    )
    assert "--run_name" in report[-1]
    assert "Epoch[" not in done.stdout + done.stderr  # nothing trained
    assert _files(run) == before  # nor written over


@pytest.mark.slow
def test_more_epochs_resume_the_run(quick_start, tmp_path):
    root = _copy(quick_start, tmp_path)
    done = _bundle(root, quick_start[1], "--epochs", "2", "--log_every_iteration", "False")
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "resuming from" in log and "Epoch[2] Complete" in log and "Epoch[1] Complete" not in log


@pytest.mark.slow
def test_the_readme_quick_start_then_a_dataset_dir_trains_the_second_run_in_its_own_folder(
    quick_start, tmp_path
):
    """The README's quick start, then its next command with ``--dataset_dir``: a new run, not a resume."""
    root, cache = _copy(quick_start, tmp_path), quick_start[1]
    data = tmp_path / "BraTS2021"
    write_phantom_dataset(data, 4, seed=1, config=PhantomConfig(spacing=4.0), progress=False)
    quick = root / "runs" / "brats_joint_robust"
    before = _files(quick)
    done = _bundle(root, cache, "--epochs", "1", "--dataset_dir", str(data))
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "no checkpoint to resume from" in log and "Epoch[1] Complete" in log
    run = root / "runs" / "brats_BraTS2021_joint_robust"
    assert (run / "metrics.json").is_file() and (run / "models" / "model.pt").is_file()
    cases = json.loads((run / "datalist.json").read_text())["training"]
    assert cases and all(case["label"].startswith(str(data)) for case in cases)
    assert _files(quick) == before  # the quick start's run is left as it was


def _multiview(root: Path, **overrides) -> ConfigWorkflow:
    workflow = ConfigWorkflow(
        config_file=str(ROOT / "bundles" / "multiview_cggm.json"),
        meta_file=str(ROOT / "bundles" / "multiview_metadata.json"),
        workflow_type="train",
        bundle_root=str(root),
        dataset="breast_cancer",
        **overrides,
    )
    workflow.initialize()
    return workflow


def test_the_multiview_bundle_refuses_a_resume_with_another_seed_or_setting_and_resumes_more_epochs(tmp_path):
    _multiview(tmp_path, epochs=1).run()
    checkpoint = (
        tmp_path / "runs" / "multiview_breast_cancer_joint_robust" / "models" / "checkpoint_epoch=1.pt"
    )
    saved = checkpoint.read_bytes()
    for overrides, difference in (
        ({"seed": 1}, "seed: 0 -> 1"),
        ({"recipes#robust#distill_weight": 0.3}, "distill_weight: 0.5 -> 0.3"),
        ({"learning_rate": 0.01}, "optimizer.lr: 0.02 -> 0.01"),
    ):
        with pytest.raises(RuntimeError) as refused:
            _multiview(tmp_path, epochs=2, **overrides).run()
        cause = root_cause(refused.value)
        assert isinstance(cause, RunDefinitionError), cause
        assert difference in str(cause) and "--resume False" in str(cause)
        assert checkpoint.read_bytes() == saved
    _multiview(tmp_path, epochs=2).run()
    assert latest_checkpoint(checkpoint.parent).name == "checkpoint_epoch=2.pt"


# -- the pieces ------------------------------------------------------------------------------------


def test_a_checkpoint_write_cut_off_half_way_leaves_nothing_to_load(tmp_path):
    """SIGKILL in the middle of atomic_save: the target is absent or whole, never half a file."""
    good = atomic_save({"x": torch.arange(4)}, tmp_path / "checkpoint_epoch=1.pt")
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        from cggm_seg.handlers import atomic_save

        class Half:  # pickled midway through the write: the process dies with half the bytes out
            def __reduce__(self):
                os.kill(os.getpid(), signal.SIGKILL)

        atomic_save({{"x": torch.zeros(10**6), "y": Half()}}, {str(tmp_path / "checkpoint_epoch=2.pt")!r})
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert (tmp_path / "checkpoint_epoch=2.pt.part").is_file()  # what the killed write left
    assert not (tmp_path / "checkpoint_epoch=2.pt").exists()
    assert latest_checkpoint(tmp_path) == good  # the .part file is not a checkpoint
    assert torch.equal(torch.load(good, weights_only=True)["x"], torch.arange(4))


def test_a_failed_write_removes_its_part_file(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("no")

    with pytest.raises(RuntimeError, match="no"):
        atomic_save({"y": Unpicklable()}, tmp_path / "a.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_older_one_used(make_engine, tmp_path, caplog):
    done: list[int] = []
    engine = make_engine(done)
    ResumableCheckpoint(tmp_path, {"optimizer": engine.optimizer}, n_saved=2).attach(engine)
    engine.run([torch.ones(2)] * 3, max_epochs=2)
    newest = tmp_path / "checkpoint_epoch=2.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # cut off, as an older version's crash could leave it

    done.clear()
    engine = make_engine(done)
    resume = ResumableCheckpoint(tmp_path, {"optimizer": engine.optimizer}, n_saved=2)
    with caplog.at_level("WARNING"):
        resume.attach(engine)
    assert resume.resumed_from == tmp_path / "checkpoint_epoch=1.pt"
    assert "checkpoint_epoch=2.pt does not load" in caplog.text
    assert (tmp_path / "checkpoint_epoch=2.pt.corrupt").is_file()  # kept, not deleted
    engine.run([torch.ones(2)] * 3, max_epochs=2)
    assert done == [2]  # epoch 1 came from the checkpoint


def test_a_run_started_over_replaces_the_older_runs_checkpoints(make_engine, tmp_path):
    """resume=False: the older run's further-on checkpoint goes, so that a later resume takes this run's."""
    engine = make_engine([])
    ResumableCheckpoint(tmp_path, {"optimizer": engine.optimizer}).attach(engine)
    engine.run([torch.ones(2)] * 3, max_epochs=3)
    engine = make_engine([])
    ResumableCheckpoint(tmp_path, {"optimizer": engine.optimizer}, resume=False).attach(engine)
    engine.run([torch.ones(2)] * 3, max_epochs=1)
    assert sorted(p.name for p in tmp_path.glob("checkpoint_epoch=*")) == ["checkpoint_epoch=1.pt"]

    done: list[int] = []
    engine = make_engine(done)
    ResumableCheckpoint(tmp_path, {"optimizer": engine.optimizer}).attach(engine)
    engine.run([torch.ones(2)] * 3, max_epochs=2)
    assert done == [2]


def test_the_scaler_is_saved_and_restored(make_engine, tmp_path):
    engine = make_engine([])
    engine.scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    ResumableCheckpoint(tmp_path, {"optimizer": engine.optimizer}).attach(engine)
    engine.run([torch.ones(2)], max_epochs=1)
    saved = torch.load(tmp_path / "checkpoint_epoch=1.pt", weights_only=True)
    assert saved["scaler"]["scale"] == 256.0

    engine = make_engine([])
    engine.scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    ResumableCheckpoint(tmp_path, {"optimizer": engine.optimizer}).attach(engine)
    engine.run([torch.ones(2)], max_epochs=2)
    assert engine.scaler.get_scale() == 256.0


def test_random_states_restore_every_generator():
    from monai.transforms import Compose, RandCropByPosNegLabeld, RandFlipd

    transform = Compose(
        [
            RandFlipd(keys="image", prob=0.5),
            RandCropByPosNegLabeld(keys="image", label_key="image", spatial_size=[2, 2, 2], num_samples=1),
        ]
    )
    transform.set_random_state(seed=3)
    states = RandomStates(transform)
    # the Compose, both dictionary transforms, and the array cropper inside the second
    assert len(states.state_dict()["transforms"]) == 4

    def draws():
        generators = [transform.transforms[0].R, transform.transforms[1].cropper.R]
        return (torch.rand(3), np.random.rand(3), random.random(), [g.rand() for g in generators])

    saved = states.state_dict()
    first = draws()
    states.load_state_dict(saved)
    second = draws()
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert first[2:] == second[2:]

    with pytest.raises(ValueError, match="holds the states of 4 random transforms, this run's training"):
        RandomStates(Compose([RandFlipd(keys="image", prob=0.5)])).load_state_dict(saved)


class _Evaluator:
    def __init__(self) -> None:
        self.state = type("State", (), {"metrics": {}, "epoch": 0, "key_metric_name": "val_dice"})()


def test_best_checkpoint_keeps_the_best_across_a_resume(tmp_path):
    net = torch.nn.Linear(2, 1)
    best = BestCheckpoint(tmp_path, {"network": net})
    evaluator = _Evaluator()
    for epoch, score in ((1, 0.5), (2, 0.8), (3, 0.7)):
        evaluator.state.epoch, evaluator.state.metrics = epoch, {"val_dice": score}
        with torch.no_grad():
            net.weight.fill_(epoch)
        best(evaluator)
    assert best.state_dict() == {"best_metric": 0.8, "best_epoch": 2}
    assert torch.load(tmp_path / "model.pt", weights_only=True)["network"]["weight"].flatten().tolist() == [
        2,
        2,
    ]

    # a resumed run: the record comes back, and a worse epoch leaves model.pt alone
    resumed = BestCheckpoint(tmp_path, {"network": net})
    resumed.load_state_dict(best.state_dict())
    evaluator.state.epoch, evaluator.state.metrics = 4, {"val_dice": 0.75}
    with torch.no_grad():
        net.weight.fill_(4)
    resumed(evaluator)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["network"]["weight"].flatten().tolist() == [
        2,
        2,
    ]
    evaluator.state.metrics = {"val_dice": 0.8}  # a tie keeps the earlier epoch
    resumed(evaluator)
    assert resumed.best_epoch == 2

    evaluator.state.metrics = {"other": 1.0}
    with pytest.raises(KeyError, match="selects on 'val_dice', which the evaluator did not compute"):
        resumed(evaluator)
    with pytest.raises(ValueError, match="mode must be 'max' or 'min'"):
        BestCheckpoint(tmp_path, {"network": net}, mode="best")


def test_reserved_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"must not name \['scaler'\]"):
        ResumableCheckpoint(tmp_path, {"scaler": object()})
