import json

import pytest

from cggm_seg.data.prepare import DatasetCheckError, default_phantom_dir, prepare_dataset


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
    from cggm_seg.data.prepare import split_cases

    data = {"training": [{"case_id": "a"}], "validation": [], "test": [{"case_id": "b"}]}
    assert split_cases(data, "test") == [{"case_id": "b"}]
    assert [c["case_id"] for c in split_cases(data, "all")] == ["a", "b"]
    with pytest.raises(ValueError, match="no labelled case"):
        split_cases(data, "validation")
    with pytest.raises(ValueError, match="split must be one of"):
        split_cases(data, "train")
