import json
from pathlib import Path

import pytest
from monai.data import load_decathlon_datalist

from cggm_seg.apps.brats.datalist import (
    SPLITS,
    describe_splits,
    load_datalist,
    make_datalist,
    require_splits,
    write_datalist,
)
from cggm_seg.apps.brats.discovery import Case, discover_cases
from cggm_seg.apps.brats.layouts import MODALITIES
from cggm_seg.cli import main

ALL_SPLITS = (*SPLITS, "unlabelled")


def fake_cases(n, start=0, labelled=True):
    """Cases that need no files: the split rule only reads ids."""
    return [
        Case(
            f"case{i:04d}",
            "brats2021",
            Path(f"/data/case{i:04d}"),
            images={m: Path(f"/data/case{i:04d}/{m}.nii.gz") for m in MODALITIES},
            label=Path(f"/data/case{i:04d}/seg.nii.gz") if labelled else None,
        )
        for i in range(start, start + n)
    ]


def split_of(datalist):
    return {entry["case_id"]: split for split in ALL_SPLITS for entry in datalist[split]}


@pytest.mark.parametrize("layout", ["brats2021", "brats2023", "msd"])
def test_roundtrip_with_datalist_beside_the_case_folders(make_dataset, layout):
    root = make_dataset(layout, n=6)
    cases = discover_cases(root)
    path = write_datalist(make_datalist(cases, seed=1), root / "datalist.json")
    raw = json.loads(path.read_text())
    assert raw["layout"] == layout and raw["modalities"] == list(MODALITIES)
    assert raw["regions"] == ["tc", "wt", "et"] and raw["seed"] == 1
    written = [e for s in SPLITS for e in raw[s]]
    assert all(not Path(e["label"]).is_absolute() for e in written)  # relative inside the folder
    loaded = {split: load_datalist(path, split) for split in ALL_SPLITS}
    ids = [e["case_id"] for entries in loaded.values() for e in entries]
    assert sorted(ids) == [c.case_id for c in cases]  # every case exactly once: splits are disjoint
    by_id = {c.case_id: c for c in cases}
    for entry in (e for entries in loaded.values() for e in entries):
        case = by_id[entry["case_id"]]  # case_id survives although a folder of that name sits beside it
        assert entry["layout"] == layout
        expected_image = str(case.image) if layout == "msd" else [str(p) for p in case.image]
        assert entry["image"] == expected_image
        assert entry["label"] == str(case.label)


def test_datalist_outside_the_data_keeps_absolute_paths_and_monai_can_read_it(make_dataset, tmp_path):
    root = make_dataset("brats2021", n=4)
    path = write_datalist(make_datalist(discover_cases(root)), tmp_path / "lists" / "brats.json")
    raw = json.loads(path.read_text())
    assert Path(raw["training"][0]["image"][0]).is_absolute()
    monai_entries = load_decathlon_datalist(path, data_list_key="training")
    assert [e["image"] for e in monai_entries] == [e["image"] for e in load_datalist(path)]


def test_same_seed_same_split_and_another_seed_another():
    cases = fake_cases(40)
    assert make_datalist(cases, seed=7) == make_datalist(cases, seed=7)
    assert split_of(make_datalist(cases, seed=7)) != split_of(make_datalist(cases, seed=8))


def test_a_case_keeps_its_split_when_other_cases_come_and_go():
    small, large = (
        split_of(make_datalist(fake_cases(50), seed=3)),
        split_of(make_datalist(fake_cases(80), seed=3)),
    )
    assert all(large[case_id] == split for case_id, split in small.items())


def test_split_sizes_follow_the_fractions():
    datalist = make_datalist(fake_cases(2000), seed=0, fractions=(0.6, 0.3, 0.1))
    sizes = [datalist[f"num{s.capitalize()}"] for s in SPLITS]
    assert sum(sizes) == 2000
    assert sizes == pytest.approx([1200, 600, 200], abs=60)  # binomial: about 3 standard deviations


@pytest.mark.parametrize("n", [3, 4, 5])
@pytest.mark.parametrize("seed", range(10))
def test_small_datasets_get_at_least_one_case_per_split(n, seed):
    datalist = make_datalist(fake_cases(n), seed=seed)
    assert all(datalist[split] for split in SPLITS)
    assert sum(len(datalist[split]) for split in SPLITS) == n


def test_a_zero_fraction_gives_an_empty_split():
    datalist = make_datalist(fake_cases(10), fractions=(0.8, 0.2, 0.0))
    assert datalist["test"] == [] and datalist["numTest"] == 0


def test_describe_splits_gives_the_counts_seed_and_fractions():
    datalist = make_datalist(fake_cases(5) + fake_cases(2, start=100, labelled=False), seed=4)
    sizes = [len(datalist[s]) for s in SPLITS]
    assert describe_splits(datalist) == (
        "5 labelled cases split by seed 4 and fractions 0.7 / 0.15 / 0.15 give "
        f"{sizes[0]} training, {sizes[1]} validation, {sizes[2]} test; 2 unlabelled"
    )


@pytest.mark.parametrize("n", [1, 2])
def test_require_splits_refuses_a_dataset_too_small_for_three_splits(n):
    datalist = make_datalist(fake_cases(n))
    empty = [split for split in SPLITS if not datalist[split]]
    assert empty  # what the split rule gives with fewer cases than splits
    with pytest.raises(ValueError) as info:
        require_splits(datalist)
    message = str(info.value)
    assert message.startswith(
        f"{n} labelled case{'s' * (n > 1)} split by seed 0 and fractions 0.7 / 0.15 / 0.15 give"
    )
    assert f"the {' and '.join(empty)} split" in message
    assert "expected at least one case in each of training, validation, test" in message
    assert "with 3 or more labelled cases" in message
    require_splits(datalist, [s for s in SPLITS if s not in empty])  # the others are filled
    require_splits(datalist, [])


def test_require_splits_names_a_zero_fraction():
    datalist = make_datalist(fake_cases(10), fractions=(0.8, 0.2, 0.0))
    with pytest.raises(
        ValueError, match=r"0 test: the test split is empty; .*\(give test a positive fraction\)"
    ):
        require_splits(datalist)
    require_splits(datalist, ["training", "validation"])
    with pytest.raises(ValueError, match=r"unknown split\(s\) \['train'\]"):
        require_splits(datalist, ["train"])


def test_unlabelled_cases_are_listed_apart():
    datalist = make_datalist(fake_cases(5) + fake_cases(2, start=100, labelled=False))
    assert [e["case_id"] for e in datalist["unlabelled"]] == ["case0100", "case0101"]
    assert all("label" not in e for e in datalist["unlabelled"])
    assert sum(len(datalist[s]) for s in SPLITS) == 5


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.7, 0.2, 0.2), (1.2, -0.1, -0.1)])
def test_invalid_fractions(fractions):
    with pytest.raises(ValueError, match=r"expected three non-negative numbers .* summing to 1"):
        make_datalist(fake_cases(5), fractions=fractions)


def test_refuses_no_cases_incomplete_cases_and_mixed_layouts():
    with pytest.raises(ValueError, match="no cases"):
        make_datalist([])
    broken = Case("case9", "brats2021", Path("/d/case9"), missing={"t2": Path("/d/case9/case9_t2.nii.gz")})
    with pytest.raises(ValueError, match=r"'case9'.*t2 \(expected /d/case9/case9_t2.nii.gz\)"):
        make_datalist([*fake_cases(3), broken])
    other = Case(
        "x", "msd", Path("/d/imagesTr"), image_4d=Path("/d/imagesTr/x.nii.gz"), label=Path("/d/l.nii.gz")
    )
    with pytest.raises(ValueError, match="several layouts"):
        make_datalist([*fake_cases(3), other])


def test_load_datalist_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_datalist(tmp_path / "nope.json")
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_datalist(path)
    path = write_datalist(make_datalist(fake_cases(5)), tmp_path / "ok.json")
    with pytest.raises(ValueError, match=r"no split 'train'; expected one of \['training', 'validation'"):
        load_datalist(path, "train")


def test_load_datalist_accepts_bare_test_paths(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"test": ["imagesTs/BRATS_900.nii.gz"]}))
    assert load_datalist(path, "test") == [{"image": str(tmp_path / "imagesTs" / "BRATS_900.nii.gz")}]


def test_cli_writes_a_datalist(make_dataset, tmp_path, capsys):
    root = make_dataset("brats2023", n=5)
    out = tmp_path / "out" / "datalist.json"
    assert main(["datalist", str(root), "--out", str(out), "--seed", "4", "--layout", "brats2023"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: ")
    assert json.loads(out.read_text())["seed"] == 4
    assert sum(len(load_datalist(out, s)) for s in SPLITS) == 5


def test_cli_refuses_an_incomplete_dataset(make_dataset, write_brats_case, tmp_path, capsys):
    root = make_dataset("brats2021")
    write_brats_case(root, "BraTS2021_00042", skip=("flair",))
    assert main(["datalist", str(root), "--out", str(tmp_path / "d.json")]) == 1
    err = capsys.readouterr().err
    assert "BraTS2021_00042" in err and "BraTS2021_00042_flair.nii.gz" in err and "cggm-seg check" in err
    assert not (tmp_path / "d.json").exists()
