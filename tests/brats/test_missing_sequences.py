"""Cases that lack a sequence: listed per case by the check, zero-filled by LoadSequencesd when allowed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, NormalizeIntensityd

from cggm_seg.apps.brats import check_dataset
from cggm_seg.apps.brats.datalist import make_datalist
from cggm_seg.apps.brats.discovery import discover_cases
from cggm_seg.apps.brats.prepare import prepare_dataset
from cggm_seg.apps.brats.transforms import LoadSequencesd


def _dataset(write_brats_case, root: Path, missing: dict[str, tuple[str, ...]]) -> Path:
    for i in range(8):
        case_id = f"BraTS2021_{i:05d}"
        write_brats_case(root, case_id, skip=missing.get(case_id, ()), seed=i)
    return root


def test_check_lists_missing_sequences_per_case_and_passes_only_when_allowed(tmp_path, write_brats_case):
    root = _dataset(
        write_brats_case, tmp_path / "d", {"BraTS2021_00001": ("t2",), "BraTS2021_00003": ("t1", "flair")}
    )
    strict = check_dataset(root, progress=False)
    assert not strict.ok and {p.case_id for p in strict.problems} == {"BraTS2021_00001", "BraTS2021_00003"}
    allowed = check_dataset(root, progress=False, allow_missing_sequences=True)
    assert allowed.ok and [(p.case_id, p.message) for p in allowed.absent] == [
        ("BraTS2021_00001", "misses t2"),
        ("BraTS2021_00003", "misses t1, flair"),
    ]
    assert "2 case(s) miss sequences" in allowed.format()


def test_a_missing_label_still_fails_when_sequences_may_be_missing(tmp_path, write_brats_case):
    root = _dataset(write_brats_case, tmp_path / "d", {"BraTS2021_00001": ("t2",)})
    (label,) = (root / "BraTS2021_00002").glob("*_seg.nii.gz")
    label.unlink()
    # an unlabelled case is not a problem for a folder with other unlabelled cases only when it is
    # a release without labels; here one label is gone among labelled cases
    report = check_dataset(root, progress=False, allow_missing_sequences=True)
    assert [p.case_id for p in report.problems] == ["BraTS2021_00002"]


def test_datalist_and_loader_zero_fill_a_missing_sequence(tmp_path, write_brats_case):
    root = _dataset(write_brats_case, tmp_path / "d", {"BraTS2021_00001": ("t2",)})
    cases = discover_cases(root)
    with pytest.raises(ValueError, match="misses t2"):
        make_datalist(cases)
    datalist = make_datalist(cases, allow_missing=True)
    entries = {e["case_id"]: e for split in ("training", "validation", "test") for e in datalist[split]}
    entry = entries["BraTS2021_00001"]
    assert entry["missing"] == ["t2"] and entry["image"][2] is None
    assert "missing" not in entries["BraTS2021_00000"]
    loaded = Compose(
        [
            LoadSequencesd(["image", "label"]),
            EnsureChannelFirstd(["image", "label"]),
            NormalizeIntensityd("image", nonzero=True, channel_wise=True),
        ]
    )(entry)
    image = loaded["image"]
    assert image.shape[0] == 4 and float(image[2].abs().max()) == 0.0
    assert all(float(image[c].abs().max()) > 0 for c in (0, 1, 3))


def test_loader_gives_what_loadimaged_gives_for_a_complete_case(tmp_path, write_brats_case):
    root = _dataset(write_brats_case, tmp_path / "d", {})
    entry = make_datalist(discover_cases(root))["training"][0]
    ours = Compose([LoadSequencesd(["image", "label"]), EnsureChannelFirstd(["image", "label"])])(entry)
    theirs = Compose(
        [
            LoadImaged(["image", "label"], reader="NibabelReader", image_only=True),
            EnsureChannelFirstd(["image", "label"]),
        ]
    )(entry)
    for key in ("image", "label"):
        assert torch.equal(ours[key].as_tensor(), theirs[key].as_tensor())
        np.testing.assert_array_equal(ours[key].affine, theirs[key].affine)
        assert str(ours[key].meta["filename_or_obj"]) == str(theirs[key].meta["filename_or_obj"])


def test_loader_refuses_a_case_with_nothing_or_mismatched_files(tmp_path, write_brats_case):
    root = _dataset(write_brats_case, tmp_path / "d", {})
    entry = make_datalist(discover_cases(root))["training"][0]
    with pytest.raises(ValueError, match="every sequence is missing"):
        LoadSequencesd("image")({"case_id": "c", "image": [None] * 4})
    other = write_brats_case(tmp_path / "other", "BraTS2021_00099", shape=(6, 8, 8))
    mixed = dict(entry, image=[entry["image"][0], str(other["t1ce"]), None, entry["image"][3]])
    with pytest.raises(ValueError, match="differ in shape"):
        LoadSequencesd("image")(mixed)


def test_prepare_dataset_takes_missing_sequences_only_when_allowed(tmp_path, write_brats_case):
    root = _dataset(write_brats_case, tmp_path / "d", {"BraTS2021_00004": ("flair",)})
    with pytest.raises(Exception, match="BraTS2021_00004"):
        prepare_dataset(root, tmp_path / "out1", fractions=(0.5, 0.25, 0.25))
    data = prepare_dataset(root, tmp_path / "out2", fractions=(0.5, 0.25, 0.25), allow_missing=True)
    entries = [e for s in ("training", "validation", "test") for e in data[s]]
    (entry,) = [e for e in entries if e["case_id"] == "BraTS2021_00004"]
    assert entry["image"][3] is None and entry["missing"] == ["flair"]
