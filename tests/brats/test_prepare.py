import json
import logging

import pytest

from cggm_seg.apps.brats.prepare import DatasetCheckError, default_phantom_dir, prepare_dataset


def test_prepare_splits_checked_dataset(make_dataset, tmp_path):
    root = make_dataset("brats2023", n=6)
    splits = prepare_dataset(root, tmp_path / "run", seed=3)
    assert splits["layout"] == "brats2023"
    ids = [e["case_id"] for s in ("training", "validation", "test") for e in splits[s]]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 6
    assert all(len(s) >= 1 for s in (splits["training"], splits["validation"], splits["test"]))
    saved = json.loads((tmp_path / "run" / "datalist.json").read_text())
    assert saved["seed"] == 3
    # same seed, same split
    again = prepare_dataset(root, tmp_path / "run2", seed=3)
    assert [e["case_id"] for e in again["test"]] == [e["case_id"] for e in splits["test"]]


def test_prepare_stops_on_bad_data_with_the_report(make_dataset, tmp_path):
    root = make_dataset("brats2021", n=3)
    victim = sorted(root.rglob("*_flair.nii.gz"))[0]
    victim.unlink()
    with pytest.raises(DatasetCheckError, match=victim.name):
        prepare_dataset(root, tmp_path / "run")
    assert not (tmp_path / "run" / "datalist.json").exists()


def test_prepare_logs_the_cases_found_and_the_split_sizes(make_dataset, tmp_path, caplog):
    root = make_dataset("brats2021", n=4)
    with caplog.at_level(logging.INFO, logger="cggm_seg.data"):
        splits = prepare_dataset(root, tmp_path / "run", seed=1)
    sizes = [len(splits[s]) for s in ("training", "validation", "test")]
    assert caplog.messages == [
        f"{root}: 4 brats2021 cases found; 4 labelled cases split by seed 1 and fractions 0.7 / 0.15 / 0.15 "
        f"give {sizes[0]} training, {sizes[1]} validation, {sizes[2]} test"
    ]


def test_prepare_warns_of_files_in_no_case(make_dataset, save_nifti, tmp_path, caplog):
    root = make_dataset("brats2021", n=3)
    stray = root / "BraTS2021_00002" / "BraTS2021_00002_t1ce_registered.nii.gz"
    stray.write_bytes((root / "BraTS2021_00002" / "BraTS2021_00002_t1ce.nii.gz").read_bytes())
    with caplog.at_level(logging.INFO, logger="cggm_seg.data"):
        prepare_dataset(root, tmp_path / "run")
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage().startswith(
        f"{root}: 1 file(s) or folder(s) belong to no case and are not used: "
        "BraTS2021_00002/BraTS2021_00002_t1ce_registered.nii.gz: matches no case file name"
    )


@pytest.mark.parametrize("n", [1, 2])
def test_prepare_refuses_a_dataset_too_small_to_split(make_dataset, tmp_path, n):
    root = make_dataset("brats2023", n=n)
    with pytest.raises(ValueError) as info:
        prepare_dataset(root, tmp_path / "run")
    message = str(info.value)
    assert message.startswith(f"{root}: {n} labelled case")
    assert "fractions 0.7 / 0.15 / 0.15 give" in message
    assert "empty; expected at least one case in each of training, validation, test" in message
    assert message.endswith("; nothing was trained")
    assert not (tmp_path / "run" / "datalist.json").exists()
    # An evaluation of every case needs no split.
    splits = prepare_dataset(root, tmp_path / "evaluation", required_splits=[])
    assert sum(len(splits[s]) for s in ("training", "validation", "test")) == n


def test_prepare_missing_folder_outside_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CGGM_SEG_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_dataset(tmp_path / "nowhere", tmp_path / "run")


def test_prepare_generates_phantom_in_cache_once(tmp_path, monkeypatch):
    monkeypatch.setenv("CGGM_SEG_CACHE", str(tmp_path / "cache"))
    folder = default_phantom_dir(cases=3, seed=1, spacing=4.0)
    assert str(tmp_path / "cache") in folder
    kwargs = dict(phantom_cases=3, phantom_seed=1, phantom_spacing=4.0)
    splits = prepare_dataset(folder, tmp_path / "run", **kwargs)
    assert sum(len(splits[s]) for s in ("training", "validation", "test")) == 3
    stamp = (tmp_path / "cache").stat().st_mtime_ns
    marker = next(iter(sorted((tmp_path / "cache").iterdir())))
    mtime = marker.stat().st_mtime_ns
    prepare_dataset(folder, tmp_path / "run", **kwargs)  # second call reuses the cache
    assert marker.stat().st_mtime_ns == mtime
    assert (tmp_path / "cache").stat().st_mtime_ns == stamp


def test_split_cases_picks_one_split_or_all():
    from cggm_seg.apps.brats.prepare import split_cases

    data = {"training": [{"case_id": "a"}], "validation": [], "test": [{"case_id": "b"}]}
    assert split_cases(data, "test") == [{"case_id": "b"}]
    assert [c["case_id"] for c in split_cases(data, "all")] == ["a", "b"]
    with pytest.raises(ValueError, match="no labelled case"):
        split_cases(data, "validation")
    with pytest.raises(ValueError, match="split must be one of"):
        split_cases(data, "train")


def test_inference_refuses_two_files_for_one_sequence(make_dataset):
    from cggm_seg.apps.brats.prepare import inference_datalist

    root = make_dataset("brats2021")
    extra = root / "BraTS2021_00001" / "BraTS2021_00001_t2.nii"
    extra.write_bytes(b"")
    with pytest.raises(ValueError, match=r"2 files for the t2 sequence \(.*_t2.nii, .*_t2.nii.gz\)"):
        inference_datalist(root)


def test_run_names_tell_the_phantom_and_other_datasets_apart(tmp_path, monkeypatch):
    from cggm_seg.apps.brats.prepare import run_name

    monkeypatch.setenv("CGGM_SEG_CACHE", str(tmp_path / "cache"))
    assert run_name(default_phantom_dir(cases=6, spacing=4.0), "cggm") == "brats_cggm"
    assert run_name("/data/BraTS2021_Training_Data/", "cggm") == "brats_BraTS2021_Training_Data_cggm"
    assert run_name(tmp_path / "my data", "ogmge", prefix="x") == "x_my_data_ogmge"
