"""A run records its definition with its checkpoints, and a resume of another definition refuses."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.losses import DiceLoss
from monai.transforms import Compose, RandFlipd, RandSpatialCropd

from cggm_seg.handlers import ResumableCheckpoint, RunDefinitionError, run_definition
from cggm_seg.handlers.definition import data_fingerprint, definition_differences, describe


def _round_trip(value):
    return json.loads(json.dumps(value, allow_nan=False))


def _loader(prob: float = 0.5, roi: int = 8) -> DataLoader:
    transform = Compose(
        [RandSpatialCropd(keys="image", roi_size=[roi] * 3), RandFlipd(keys="image", prob=prob)]
    )
    return DataLoader(Dataset([{"image": torch.zeros(1, 16, 16, 16)}], transform), batch_size=2, shuffle=True)


def _definition(**changes) -> dict:
    settings = {"lr": 0.01, "momentum": 0.9, "prob": 0.5, "roi": 8, "squared_pred": True, "seed": 0}
    settings.update(changes)
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv3d(4, 8, 3), torch.nn.ReLU(), torch.nn.Conv3d(8, 3, 1))
    optimizer = torch.optim.SGD(network.parameters(), lr=settings["lr"], momentum=settings["momentum"])
    return run_definition(
        seed=settings["seed"],
        network=network,
        loss=DiceLoss(sigmoid=True, squared_pred=settings["squared_pred"]),
        optimizer=optimizer,
        train=_loader(settings["prob"], settings["roi"]),
    )


def test_the_same_run_has_the_same_definition_after_a_json_round_trip():
    definition = _definition()
    assert definition_differences(_round_trip(definition), _definition()) == []
    assert definition["optimizer"]["lr"] == 0.01 and definition["loss"]["squared_pred"] is True
    assert definition["train"]["batch_size"] == 2
    assert "Conv3d(4, 8" in definition["network"]["layers"]


def test_a_setting_anywhere_inside_the_objects_is_named_with_both_values():
    saved = _round_trip(_definition())
    assert definition_differences(saved, _definition(lr=0.02)) == ["optimizer.lr: 0.01 -> 0.02"]
    assert definition_differences(saved, _definition(momentum=0.5)) == ["optimizer.momentum: 0.9 -> 0.5"]
    assert definition_differences(saved, _definition(squared_pred=False)) == [
        "loss.squared_pred: true -> false"
    ]
    assert definition_differences(saved, _definition(seed=1)) == ["seed: 0 -> 1"]
    (flip,) = definition_differences(saved, _definition(prob=0.2))
    assert flip == "train.dataset.transform.transforms[1:RandFlipd].prob: 0.5 -> 0.2"
    (crop,) = definition_differences(saved, _definition(roi=6))
    assert (
        crop.startswith("train.dataset.transform.transforms[0:RandSpatialCropd].")
        and "[8, 8, 8] -> [6, 6, 6]" in crop
    )


def test_a_changed_architecture_names_the_first_layer_that_differs():
    saved = _round_trip(describe(torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Linear(4, 1))))
    changed = describe(torch.nn.Sequential(torch.nn.Linear(2, 5), torch.nn.Linear(5, 1)))
    (line,) = definition_differences({"network": saved}, {"network": changed})
    assert line.startswith("network.layers: differ from line 2: (0): Linear(in_features=2, out_features=4")


def test_state_and_execution_are_not_settings():
    """Loggers, generators and devices are left out; NaN survives JSON; workers are not recorded."""

    class Handler:
        def __init__(self, device: str) -> None:
            self.logger = logging.getLogger("x")
            self.generator = torch.Generator().manual_seed(0)
            self.device = torch.device(device)
            self.eps = torch.full((4,), float("nan"))
            self.rho = 1.0
            self._private = object()

    described = describe(Handler("cpu"))
    assert set(described) == {"type", "eps", "rho"} and described["eps"] == ["nan"] * 4
    assert definition_differences(_round_trip(described), describe(Handler("meta"))) == []
    workers = DataLoader(Dataset([1, 2]), batch_size=2, num_workers=2)
    assert describe(workers) == describe(DataLoader(Dataset([1, 2]), batch_size=2))


def _dataset(root, cases: dict[str, bytes]) -> dict:
    """A datalist of cases whose two files hold ``cases[case_id]``, all in the training split."""
    entries = []
    for case_id, content in cases.items():
        folder = root / case_id
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("t1", "seg"):
            (folder / f"{case_id}_{name}.nii.gz").write_bytes(content)
        image, label = folder / f"{case_id}_t1.nii.gz", folder / f"{case_id}_seg.nii.gz"
        entries.append({"case_id": case_id, "image": [str(image)], "label": str(label)})
    return {"training": entries, "validation": [], "layout": "brats2021", "datalist": str(root / "dl.json")}


def test_data_differences_count_and_name_the_cases_added_removed_changed_and_moved(tmp_path):
    content = {f"case{i}": bytes([i]) * 10000 for i in range(6)}
    saved = _round_trip(data_fingerprint(_dataset(tmp_path / "a", content)))

    copied = tmp_path / "copy"
    shutil.copytree(tmp_path / "a", copied)  # the same files elsewhere are the same data
    assert (
        definition_differences({"data": saved}, {"data": data_fingerprint(_dataset(copied, content))}) == []
    )

    changed = dict(content)
    del changed["case0"]
    changed["case9"] = b"new" * 100
    edited = bytearray(content["case1"])
    edited[-1] = 7  # the same size, another last byte (a .nii.gz's checksum)
    changed["case1"] = bytes(edited)
    data = _dataset(tmp_path / "b", changed)
    data["validation"] = [data["training"].pop(1)]  # case2 moves to validation
    (line,) = definition_differences({"data": saved}, {"data": data_fingerprint(data)})
    assert line == (
        "data: 1 case added (case9); 1 case removed (case0); 1 case changed (case1); "
        "1 case moved to another split (case2)"
    )
    many = {f"new{i}": b"x" for i in range(5)}
    (line,) = definition_differences(
        {"data": saved}, {"data": data_fingerprint(_dataset(tmp_path / "c", many))}
    )
    assert line.startswith(
        "data: 5 cases added (new0, new1, new2, ...); 6 cases removed (case0, case1, case2, ...)"
    )


def test_in_memory_data_is_digested():
    data = {"x": torch.arange(1000.0)}
    other = {"x": torch.arange(1000.0).flip(0)}
    (line,) = definition_differences(
        {"data": _round_trip(data_fingerprint(data))}, {"data": data_fingerprint(other)}
    )
    assert line.startswith("data.x.digest: ")


# -- the checkpoint handler ------------------------------------------------------------------------


@pytest.fixture(name="train")
def train_fixture(make_engine):
    """``train(folder, definition, epochs, resume=True)``: a tiny run checkpointed into ``folder``;
    returns the epochs it trained."""

    def train(folder, definition, epochs: int, resume: bool = True) -> list[int]:
        done: list[int] = []
        engine = make_engine(done)
        checkpoint = ResumableCheckpoint(
            folder, {"optimizer": engine.optimizer}, resume=resume, definition=definition
        )
        checkpoint.attach(engine)
        engine.run([torch.ones(2)] * 2, max_epochs=epochs)
        return done

    return train


def test_a_resume_of_another_definition_refuses_before_training_and_lists_the_differences(
    train, make_engine, tmp_path
):
    assert train(tmp_path, {"seed": 0, "lr": 0.01, "epochs_independent": True}, epochs=1) == [1]
    saved = torch.load(tmp_path / "checkpoint_epoch=1.pt", weights_only=True)
    assert json.loads(saved["definition"])["lr"] == 0.01

    engine = make_engine([])
    handler = ResumableCheckpoint(
        tmp_path, {"optimizer": engine.optimizer}, definition={"seed": 1, "lr": 0.02}
    )
    with pytest.raises(RunDefinitionError) as refused:
        handler.attach(engine)
    message = str(refused.value)
    assert (
        "checkpoint_epoch=1.pt was saved by a run that differs from this one in (saved -> this run):"
        in message
    )
    assert "\n  seed: 0 -> 1\n  lr: 0.01 -> 0.02\n  epochs_independent: true -> (absent)\n" in message
    assert message.splitlines()[-1].startswith("Start over in this folder with --resume False, or train into")
    assert "--run_name" in message.splitlines()[-1]
    assert not (tmp_path / "run.lock").exists()  # released: the folder is free for the two ways out


def test_the_same_definition_resumes_and_more_epochs_are_not_part_of_it(train, tmp_path):
    train(tmp_path, {"seed": 0}, epochs=1)
    assert train(tmp_path, {"seed": 0}, epochs=3) == [2, 3]


def test_a_checkpoint_without_a_definition_resumes_with_a_warning(train, tmp_path, caplog):
    train(tmp_path, None, epochs=1)
    with caplog.at_level("WARNING"):
        assert train(tmp_path, {"seed": 0}, epochs=2) == [2]
    assert "records no run definition" in caplog.text


def test_a_definition_must_be_json(tmp_path):
    with pytest.raises(ValueError, match="definition must be JSON-able"):
        ResumableCheckpoint(tmp_path, {"x": torch.nn.Linear(1, 1)}, definition={"net": torch.nn.Linear(1, 1)})
    with pytest.raises(ValueError, match="definition must be JSON-able"):
        ResumableCheckpoint(tmp_path, {"x": torch.nn.Linear(1, 1)}, definition={"lr": float("nan")})
