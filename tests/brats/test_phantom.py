"""The phantom generator: determinism, layouts on disk, label nesting, contrasts, knobs, errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from cggm_seg import cli
from cggm_seg.apps.brats.layouts import MODALITIES
from cggm_seg.apps.brats.phantom import (
    CONTRAST_TABLE,
    PhantomConfig,
    make_phantom_case,
    phantom_anatomy,
    write_phantom_dataset,
)

# 4 mm keeps the on-disk and determinism tests fast; the contrast tests use the default 2 mm.
FAST = PhantomConfig(spacing=4.0)


@pytest.fixture(scope="module")
def case():
    """A default (2 mm) case and its healthy anatomy."""
    tissues, _ = phantom_anatomy(np.random.default_rng(3))
    return make_phantom_case(np.random.default_rng(3)), tissues


def _region_masks(label: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "ncr": label == 1,
        "ed": label == 2,
        "et": label == 4,
        "tc": np.isin(label, (1, 4)),
        "wt": label > 0,
    }


def test_same_seed_gives_identical_arrays_and_other_seed_differs():
    a, b, c = (make_phantom_case(seed, FAST) for seed in (7, 7, 8))
    for m in MODALITIES:
        assert a.images[m].tobytes() == b.images[m].tobytes()
        assert not np.array_equal(a.images[m], c.images[m])
    assert a.label.tobytes() == b.label.tobytes()
    np.testing.assert_array_equal(a.affine, b.affine)
    assert not np.array_equal(a.label, c.label)


def test_case_arrays_types_and_shapes(case):
    phantom, _ = case
    assert set(phantom.images) == set(MODALITIES)
    for image in phantom.images.values():
        assert image.dtype == np.float32 and image.shape == (99, 117, 95)
        assert np.isfinite(image).all() and image.min() >= 0
    assert phantom.label.dtype == np.uint8 and phantom.label.shape == (99, 117, 95)
    assert set(np.unique(phantom.label)) == {0, 1, 2, 4}
    np.testing.assert_allclose(np.diag(phantom.affine)[:3], 2.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regions_are_nested_and_non_empty(seed):
    label = make_phantom_case(seed, FAST).label
    regions = _region_masks(label)
    for name in ("ncr", "et", "ed", "tc", "wt"):
        assert regions[name].any(), name
    assert not (regions["et"] & ~regions["tc"]).any()
    assert not (regions["ncr"] & ~regions["tc"]).any()
    assert not (regions["tc"] & ~regions["wt"]).any()
    # The tumour is one piece around its core.
    assert ndimage.label(regions["tc"])[1] == 1


def test_contrasts_within_label_masks(case):
    phantom, tissues = case
    regions = _region_masks(phantom.label)
    healthy = phantom.label == 0
    wm = (tissues["wm"] > 0.9) & healthy
    csf = (tissues["csf"] > 0.9) & healthy & (phantom.images["t1"] > 0)

    def mean(modality, mask):
        assert mask.sum() > 0
        return float(phantom.images[modality][mask].mean())

    assert mean("t1ce", regions["et"]) > 1.3 * mean("t1ce", wm)
    assert mean("t1ce", regions["et"]) > mean("t1ce", regions["ncr"])
    assert mean("flair", regions["ed"]) > 1.3 * mean("flair", wm)
    assert mean("t2", regions["ed"]) > 1.3 * mean("t2", wm)
    assert mean("t2", regions["ncr"]) > mean("t2", regions["ed"])
    assert mean("t1", regions["ncr"]) < mean("t1", wm)
    assert mean("flair", csf) < 0.3 * mean("flair", wm)
    assert mean("t2", csf) > 2.0 * mean("t2", wm)


def test_contrast_table_is_relative_to_white_matter():
    assert all(v == 1.0 for v in CONTRAST_TABLE["wm"].values())
    assert set(CONTRAST_TABLE) == {"csf", "gm", "wm", "ed", "et", "ncr"}


def test_contrast_zero_hides_the_tumour_in_that_sequence_only(case):
    baseline, tissues = case
    blind = make_phantom_case(np.random.default_rng(3), PhantomConfig(contrast={"t1ce": 0.0}))
    np.testing.assert_array_equal(blind.label, baseline.label)
    for m in ("t1", "t2", "flair"):
        assert blind.images[m].tobytes() == baseline.images[m].tobytes()

    et = baseline.label == 4
    wm = (tissues["wm"] > 0.9) & (baseline.label == 0)

    def et_to_wm(image):
        return image[et].mean() / image[wm].mean()

    assert et_to_wm(baseline.images["t1ce"]) > 1.3
    # Without contrast the enhancing tumour has the signal of the tissue it sits in (mostly WM).
    assert 0.85 < et_to_wm(blind.images["t1ce"]) < 1.05
    # Away from the tumour (its labels and partial-volume edge) nothing changes.
    away = ~ndimage.binary_dilation(baseline.label > 0, iterations=3)
    np.testing.assert_array_equal(blind.images["t1ce"][away], baseline.images["t1ce"][away])


def test_noise_knob_changes_only_that_sequence():
    baseline = make_phantom_case(5, FAST)
    noisy = make_phantom_case(5, PhantomConfig(spacing=4.0, noise={"flair": 3.0}))
    for m in ("t1", "t1ce", "t2"):
        assert noisy.images[m].tobytes() == baseline.images[m].tobytes()
    brain = baseline.images["flair"] > 0
    base_diff = np.abs(np.diff(baseline.images["flair"], axis=0))[brain[1:] & brain[:-1]].mean()
    noisy_diff = np.abs(np.diff(noisy.images["flair"], axis=0))[brain[1:] & brain[:-1]].mean()
    assert noisy_diff > base_diff


# layout -> (first case id, separator, suffixes of t1, t1ce, t2, flair, seg)
PER_FILE_NAMES = {
    "brats2021": ("BraTS2021_00000", "_", ("t1", "t1ce", "t2", "flair", "seg")),
    "brats2023": ("BraTS-GLI-00000-000", "-", ("t1n", "t1c", "t2w", "t2f", "seg")),
}
EXPECTED_LABELS = {"brats2021": {0, 1, 2, 4}, "brats2023": {0, 1, 2, 3}, "msd": {0, 1, 2, 3}}


@pytest.mark.parametrize("layout", ["brats2021", "brats2023", "msd"])
def test_every_layout_writes_real_file_names_and_label_values(tmp_path, layout):
    out = tmp_path / layout
    ids = write_phantom_dataset(out, cases=1, seed=0, layout=layout, config=FAST, progress=False)
    reference = make_phantom_case(np.random.default_rng([0, 0]), FAST)
    if layout == "msd":
        assert ids == ["BRATS_000"]
        image = nib.load(out / "imagesTr" / "BRATS_000.nii.gz")
        label = nib.load(out / "labelsTr" / "BRATS_000.nii.gz")
        assert image.shape == (*reference.label.shape, 4) and image.get_data_dtype() == np.float32
        data = np.asarray(image.dataobj)
        for channel, modality in enumerate(("flair", "t1", "t1ce", "t2")):
            np.testing.assert_array_equal(data[..., channel], reference.images[modality])
        dataset = json.loads((out / "dataset.json").read_text())
        assert dataset["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
        assert dataset["training"] == [
            {"image": "./imagesTr/BRATS_000.nii.gz", "label": "./labelsTr/BRATS_000.nii.gz"}
        ]
        values = np.asarray(label.dataobj)
        # MSD: 1 oedema, 2 non-enhancing (NCR), 3 enhancing.
        np.testing.assert_array_equal(values == 1, reference.label == 2)
        np.testing.assert_array_equal(values == 2, reference.label == 1)
        np.testing.assert_array_equal(values == 3, reference.label == 4)
    else:
        case_id, separator, suffixes = PER_FILE_NAMES[layout]
        assert ids == [case_id]
        names = [f"{case_id}{separator}{suffix}.nii.gz" for suffix in suffixes]
        assert sorted(p.name for p in (out / case_id).iterdir()) == sorted(names)
        image = nib.load(out / ids[0] / names[1])
        np.testing.assert_array_equal(np.asarray(image.dataobj), reference.images["t1ce"])
        np.testing.assert_allclose(image.affine, reference.affine)
        label = nib.load(out / ids[0] / names[-1])
        values = np.asarray(label.dataobj)
        expected_et = 4 if layout == "brats2021" else 3
        np.testing.assert_array_equal(values == expected_et, reference.label == 4)
    assert label.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(label.dataobj))) == EXPECTED_LABELS[layout]
    assert json.loads((out / "phantom.json").read_text())["layout"] == layout


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown sequence.*'dwi'.*t1ce"):
        PhantomConfig(noise={"dwi": 2.0})
    with pytest.raises(ValueError, match=r"contrast\['t2'\] must be a finite number >= 0"):
        PhantomConfig(contrast={"t2": -1.0})
    with pytest.raises(ValueError, match="spacing"):
        PhantomConfig(spacing=0.0)
    with pytest.raises(ValueError, match="necrosis_radius_mm"):
        PhantomConfig(necrosis_radius_mm=(10.0, 5.0))
    with pytest.raises(ValueError, match="gamma.*0 < low"):
        PhantomConfig(gamma=(0.0, 1.0))
    with pytest.raises(ValueError, match="cases must be an integer >= 1"):
        write_phantom_dataset(tmp_path / "none", cases=0)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        write_phantom_dataset(tmp_path / "none", cases=1, seed=-1)
    with pytest.raises(ValueError, match="unknown BraTS layout"):
        write_phantom_dataset(tmp_path / "none", cases=1, layout="brats2015")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty.*overwrite"):
        write_phantom_dataset(busy, cases=1, config=FAST, progress=False)
    write_phantom_dataset(busy, cases=1, config=FAST, progress=False, overwrite=True)
    assert (busy / "notes.txt").read_text() == "keep me"
    assert (busy / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz").is_file()


def test_cli_generates_and_previews(tmp_path, capsys):
    out = tmp_path / "data"
    argv = ["phantom", "--out", str(out), "--cases", "2", "--seed", "1", "--spacing", "4"]
    knobs = ["--noise", "flair=2.0", "--contrast", "t1ce=0.5", "t2=0", "--no-progress"]
    assert cli.main([*argv, *knobs]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["BraTS2021_00000", "BraTS2021_00001", "phantom.json"]
    config = json.loads((out / "phantom.json").read_text())["config"]
    assert config["noise"] == {"flair": 2.0} and config["contrast"] == {"t1ce": 0.5, "t2": 0.0}

    png = tmp_path / "preview.png"
    assert cli.main(["phantom", "--preview", str(out / "BraTS2021_00001"), "--png", str(png)]) == 0
    assert png.stat().st_size > 10_000

    capsys.readouterr()
    assert cli.main([*argv, "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli.main(["phantom", "--out", str(tmp_path / "x"), "--cases", "1", "--noise", "adc=2"]) == 2
    assert "unknown sequence" in capsys.readouterr().err
    assert cli.main(["phantom", "--out", str(tmp_path / "y"), "--cases", "0"]) == 2
    assert cli.main(["phantom", "--preview", str(out / "BraTS2021_00001")]) == 2
    assert "--png" in capsys.readouterr().err
