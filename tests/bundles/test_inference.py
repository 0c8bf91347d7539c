"""bundles/inference.json on top of the experiment: one BraTS-label NIfTI per case in each input's space.

The bundles run in-process, without their logging file, to spare a PyTorch import per run: one
1-epoch training of ``brats_cggm.json`` on a 3-case phantom at 4 mm serves the default network's
tests; the other networks predict with their initial weights, saved as their training run saves
its best model.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.bundle import run as run_bundle
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

from cggm_seg.apps.brats.layouts import MODALITIES, get_layout
from cggm_seg.apps.brats.phantom import PhantomConfig, write_phantom_dataset
from cggm_seg.apps.brats.prepare import default_phantom_dir, inference_datalist

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
EXPERIMENT = str(BUNDLES / "brats_cggm.json")
INFERENCE = str(BUNDLES / "inference.json")
#: The tiny phantom both bundles read by default with these overrides, and a crop the 4 mm images hold.
TINY = {"phantom#cases": 3, "phantom#spacing": 4.0, "roi_size": [32, 32, 32]}


@pytest.fixture(scope="module")
def bundle_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A bundle root holding ``runs/brats_joint_robust/models/model.pt`` from a 1-epoch training run."""
    tmp = tmp_path_factory.mktemp("inference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CGGM_SEG_CACHE", str(tmp / "cache"))
        root = tmp / "root"
        run_bundle(
            config_file=str(BUNDLES / "brats_cggm.json"),
            logging_file=False,
            bundle_root=str(root),
            epochs=1,
            val_interval=1,
            run=["$@train#trainer.run()"],  # model.pt is written on validation; skip the test-set report
            **TINY,
        )
        assert (root / "runs" / "brats_joint_robust" / "models" / "model.pt").is_file()
        yield root


def infer(*variant: str, **override: object) -> None:
    """Run the inference bundle on the experiment and its ``variant`` override files, with ``override``.

    The model-zoo properties of an inference workflow are checked first.
    """
    config_file = [EXPERIMENT, *(str(BUNDLES / name) for name in variant), INFERENCE]
    workflow = ConfigWorkflow(config_file=config_file, logging_file=False, workflow_type="infer", **override)
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()


def check_predictions(output_dir: Path, dataset_dir: str | Path, layout: str) -> dict[str, np.ndarray]:
    """Assert one uint8 prediction per case, in the case's grid and layout's labels; return them by id."""
    entries = inference_datalist(dataset_dir)
    expected = sorted(f"{e['case_id']}_seg.nii.gz" for e in entries)
    assert sorted(p.name for p in output_dir.iterdir()) == expected
    predictions = {}
    for entry in entries:
        image = entry["image"]
        source = nib.load(image[0] if isinstance(image, list) else image)  # a sequence, or the MSD 4D file
        prediction = nib.load(output_dir / f"{entry['case_id']}_seg.nii.gz")
        assert prediction.shape == source.shape[:3], entry["case_id"]
        np.testing.assert_allclose(prediction.affine, source.affine, atol=1e-4, err_msg=entry["case_id"])
        assert prediction.get_data_dtype() == np.uint8
        values = np.asanyarray(prediction.dataobj)
        assert set(np.unique(values).tolist()) <= get_layout(layout).label_values, entry["case_id"]
        predictions[entry["case_id"]] = values
    return predictions


@pytest.mark.slow
def test_brats2021_predictions_follow_the_inputs(bundle_root: Path) -> None:
    infer(bundle_root=str(bundle_root), **TINY)
    dataset_dir = default_phantom_dir(cases=3, spacing=4.0)
    check_predictions(bundle_root / "runs" / "brats_joint_robust" / "predictions", dataset_dir, "brats2021")


@pytest.mark.slow
def test_msd_4d_predictions_in_any_orientation_and_without_labels(bundle_root: Path, tmp_path: Path) -> None:
    dataset_dir = tmp_path / "msd"
    write_phantom_dataset(
        dataset_dir, 1, seed=1, layout="msd", config=PhantomConfig(spacing=4.0), progress=False
    )
    # The same case once more, stored posterior-inferior-left and unlabelled in imagesTs: its
    # prediction must be the first one, in its own voxel order.
    original = nib.load(dataset_dir / "imagesTr" / "BRATS_000.nii.gz")
    to_pil = ornt_transform(io_orientation(original.affine), axcodes2ornt("PIL"))
    (dataset_dir / "imagesTs").mkdir()
    nib.save(original.as_reoriented(to_pil), dataset_dir / "imagesTs" / "BRATS_100.nii.gz")
    output_dir = tmp_path / "predictions"

    infer(
        bundle_root=str(bundle_root),
        run_name="brats_joint_robust",  # the run a training on dataset_dir would name
        dataset_dir=str(dataset_dir),
        prediction_dir=str(output_dir),
        roi_size=TINY["roi_size"],
    )

    predictions = check_predictions(output_dir, dataset_dir, "msd")
    assert set(predictions) == {"BRATS_000", "BRATS_100"}
    assert len(np.unique(predictions["BRATS_000"])) > 1, "a constant prediction cannot show the orientation"
    reoriented = nib.load(output_dir / "BRATS_100_seg.nii.gz")
    back = reoriented.as_reoriented(ornt_transform(axcodes2ornt("PIL"), io_orientation(original.affine)))
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), predictions["BRATS_000"])


@pytest.mark.slow
def test_missing_checkpoint_fails_naming_it(bundle_root: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "runs" / "brats_ogmge" / "models" / "model.pt"
    output_dir = tmp_path / "predictions"
    with pytest.raises((FileNotFoundError, RuntimeError)) as raised:  # MONAI wraps it in a RuntimeError
        infer(
            bundle_root=str(bundle_root),
            checkpoint=str(checkpoint),
            prediction_dir=str(output_dir),
            **TINY,
        )
    chain, error = [], raised.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert any(isinstance(e, FileNotFoundError) and str(checkpoint) in str(e) for e in chain), chain
    assert not output_dir.exists()


@pytest.fixture(scope="module")
def one_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-case brats2021 phantom at 4 mm."""
    dataset_dir = tmp_path_factory.mktemp("one_case")
    write_phantom_dataset(dataset_dir, 1, seed=2, config=PhantomConfig(spacing=4.0), progress=False)
    return dataset_dir


def save_initial_weights(*variant: str, **override: object) -> Path:
    """Save the variant's untrained network as its training run saves the best one; return the run folder.

    The experiment's own ``BestCheckpoint`` writes ``model.pt`` (network and heads) as after a
    first validation.
    """
    parser = ConfigParser()
    parser.read_config([EXPERIMENT, *(str(BUNDLES / name) for name in variant)])
    parser.update(override)
    best = parser.get_parsed_content("validate#handler_set#best_checkpoint")
    validated = SimpleNamespace(key_metric_name="val_mean_dice", metrics={"val_mean_dice": 0.0}, epoch=1)
    best(SimpleNamespace(state=validated))
    return Path(parser.get_parsed_content("output_dir"))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["gpu_paper.json", "early_fusion.json", "unimodal.json"])
def test_a_trained_variant_predicts_with_its_own_overrides(
    variant: str, one_case: Path, tmp_path: Path
) -> None:
    settings = {"bundle_root": str(tmp_path), "dataset_dir": str(one_case), "roi_size": TINY["roi_size"]}
    run_dir = save_initial_weights(variant, **settings)
    infer(variant, **settings)
    check_predictions(run_dir / "predictions", one_case, "brats2021")


def test_inference_datalist_takes_unlabelled_cases_and_names_missing_files(tmp_path: Path) -> None:
    layout = get_layout("brats2021")
    root = tmp_path / "brats"
    for case_id in ("BraTS2021_00000", "BraTS2021_00001"):
        (root / case_id).mkdir(parents=True)
        for role in (*MODALITIES, "seg"):
            (root / case_id / layout.file_name(case_id, role)).touch()
    (root / "BraTS2021_00001" / layout.file_name("BraTS2021_00001", "seg")).unlink()

    entries = inference_datalist(root)
    assert [e["case_id"] for e in entries] == ["BraTS2021_00000", "BraTS2021_00001"]
    assert entries[1]["image"] == [
        str(root / "BraTS2021_00001" / layout.file_name("BraTS2021_00001", m)) for m in MODALITIES
    ]

    flair = root / "BraTS2021_00001" / layout.file_name("BraTS2021_00001", "flair")
    flair.unlink()
    with pytest.raises(ValueError, match=f"'BraTS2021_00001'.*{re.escape(str(flair))}"):
        inference_datalist(root)
    (tmp_path / "empty" / "imagesTr").mkdir(parents=True)
    with pytest.raises(ValueError, match=re.escape(f"no case found in {tmp_path / 'empty'}")):
        inference_datalist(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere"))):
        inference_datalist(tmp_path / "nowhere")


def test_inference_datalist_allows_missing_sequences_when_asked(tmp_path: Path) -> None:
    layout = get_layout("brats2021")
    root = tmp_path / "brats"
    case_dir = root / "BraTS2021_00000"
    case_dir.mkdir(parents=True)
    for role in ("t1", "t1ce", "flair"):  # no t2
        (case_dir / layout.file_name("BraTS2021_00000", role)).touch()
    with pytest.raises(ValueError, match=r"misses t2 .*--allow_missing_sequences True"):
        inference_datalist(root)
    (entry,) = inference_datalist(root, allow_missing=True)
    assert entry["missing"] == ["t2"]
    assert entry["image"][2] is None and entry["image"][3].endswith("_flair.nii.gz")
    for role in ("t1", "t1ce", "flair"):  # nothing left to predict from: refused even when allowed
        (case_dir / layout.file_name("BraTS2021_00000", role)).unlink()
    (case_dir / layout.file_name("BraTS2021_00000", "seg")).touch()
    with pytest.raises(ValueError, match="'BraTS2021_00000'"):
        inference_datalist(root, allow_missing=True)


@pytest.mark.slow
def test_a_case_without_t2_is_predicted_from_the_other_sequences(
    bundle_root: Path, one_case: Path, tmp_path: Path
) -> None:
    dataset_dir = tmp_path / "no_t2"
    import shutil

    shutil.copytree(one_case, dataset_dir)
    (t2,) = dataset_dir.glob("*/*_t2.nii.gz")
    t2.unlink()
    output_dir = tmp_path / "predictions"
    settings = {
        "bundle_root": str(bundle_root),
        "run_name": "brats_joint_robust",
        "dataset_dir": str(dataset_dir),
    }
    with pytest.raises(Exception, match="allow_missing_sequences"):
        infer(prediction_dir=str(output_dir), roi_size=TINY["roi_size"], **settings)
    infer(prediction_dir=str(output_dir), roi_size=TINY["roi_size"], allow_missing_sequences=True, **settings)
    (prediction,) = output_dir.iterdir()
    source = nib.load(next(dataset_dir.glob("*/*_t1.nii.gz")))
    assert nib.load(prediction).shape == source.shape
