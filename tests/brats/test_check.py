import hashlib
import json

import numpy as np
import pytest

from cggm_seg.apps.brats.check import check_dataset
from cggm_seg.apps.brats.datalist import make_datalist, write_datalist
from cggm_seg.apps.brats.discovery import discover_cases
from cggm_seg.cli import main


def varying(shape, dtype=np.float32):
    """A volume with contrast, valid as a sequence and as a label of every layout (values 0-2)."""
    return (np.arange(np.prod(shape)).reshape(shape) % 3).astype(dtype)


def only_problem(report, case_id, file_name, *phrases):
    """The one problem of ``report``, asserting it names the case, the file and every phrase."""
    assert len(report.problems) == 1, report.format()
    (problem,) = report.problems
    assert problem.case_id == case_id
    assert problem.file is not None and problem.file.name == file_name
    for phrase in phrases:
        assert phrase in problem.message, problem.message
    return problem


def run_cli(capsys, *args):
    code = main(["check", *map(str, args), "--no-progress"])
    return code, capsys.readouterr().out


@pytest.mark.parametrize("layout", ["brats2021", "brats2023", "msd"])
def test_a_clean_dataset_has_no_problems(make_dataset, capsys, layout):
    root = make_dataset(layout)
    report = check_dataset(root, progress=False)
    assert report.ok and report.problems == [] and report.n_cases == 3 and report.layout == layout
    code, out = run_cli(capsys, root)
    assert code == 0
    assert out.strip() == f"OK: 3 cases ({layout}) in {root}, no problems found"


def test_missing_sequence_file(make_dataset, capsys):
    root = make_dataset("brats2021")
    (root / "BraTS2021_00002" / "BraTS2021_00002_t1ce.nii.gz").unlink()
    report = check_dataset(root, progress=False)
    only_problem(
        report, "BraTS2021_00002", "BraTS2021_00002_t1ce.nii.gz", "t1ce sequence file not found", "expected"
    )
    code, out = run_cli(capsys, root)
    assert code == 1
    assert (
        "BraTS2021_00002:\n  BraTS2021_00002/BraTS2021_00002_t1ce.nii.gz: t1ce sequence file not found" in out
    )
    assert out.splitlines()[-1] == f"FAILED: 1 problem in 1 of 3 cases (brats2021) in {root}"


def test_missing_msd_label(make_dataset):
    root = make_dataset("msd")
    (root / "labelsTr" / "BRATS_003.nii.gz").unlink()
    only_problem(check_dataset(root, progress=False), "BRATS_003", "BRATS_003.nii.gz", "label file not found")


def test_no_cases_found(tmp_path, capsys):
    report = check_dataset(tmp_path, "brats2023", progress=False)
    assert report.n_cases == 0
    problem = only_problem(
        report, None, tmp_path.name, "no cases found", "<case>/<case>-{t1n,t1c,t2w,t2f,seg}"
    )
    assert problem.file == tmp_path
    code, out = run_cli(capsys, tmp_path)
    assert code == 1 and "no BraTS layout recognised in" in out and "expected one of" in out


def test_duplicate_case_id_in_two_folders(tmp_path, write_brats_case):
    write_brats_case(tmp_path / "2021", "BraTS2021_00001")
    write_brats_case(tmp_path / "extra", "BraTS2021_00001")
    problem = only_problem(
        check_dataset(tmp_path, progress=False), "BraTS2021_00001", "BraTS2021_00001", "found in 2 folders"
    )
    assert problem.file == tmp_path / "extra" / "BraTS2021_00001"
    assert (
        str(tmp_path / "2021" / "BraTS2021_00001") in problem.message
        and "expected each case once" in problem.message
    )


def test_datalist_listing_a_case_twice(make_dataset, tmp_path, capsys):
    root = make_dataset("brats2021")
    datalist = make_datalist(discover_cases(root))
    entry = next(e for split in ("training", "validation", "test") for e in datalist[split])
    datalist["test"].append(entry)
    path = write_datalist(datalist, tmp_path / "datalist.json")
    problem = only_problem(check_dataset(datalist=path, progress=False), entry["case_id"], "datalist.json")
    assert "listed 2 times" in problem.message and "test[" in problem.message
    assert "expected each case once" in problem.message
    code, out = run_cli(capsys, "--datalist", path)
    assert code == 1 and entry["case_id"] in out


@pytest.mark.parametrize("odd_one", ["t2", "seg"])
def test_shape_mismatch_within_a_case(make_dataset, save_nifti, odd_one):
    root = make_dataset("brats2021")
    name = f"BraTS2021_00001_{odd_one}.nii.gz"
    save_nifti(root / "BraTS2021_00001" / name, varying((8, 8, 9), np.uint8))
    only_problem(
        check_dataset(root, progress=False),
        "BraTS2021_00001",
        name,
        "shape (8, 8, 9) differs from t1 sequence BraTS2021_00001_t1.nii.gz (8, 8, 8)",
        "expected all files of a case on one voxel grid",
    )


def test_msd_label_shape_mismatch(make_dataset, save_nifti):
    root = make_dataset("msd")
    save_nifti(root / "labelsTr" / "BRATS_002.nii.gz", np.zeros((8, 8, 7), dtype=np.uint8))
    only_problem(
        check_dataset(root, progress=False), "BRATS_002", "BRATS_002.nii.gz", "differs from 4D image"
    )


def test_affine_mismatch_beyond_tolerance(make_dataset, save_nifti):
    root = make_dataset("brats2023")
    shifted = np.eye(4)
    shifted[:3, 3] = [0.0, 0.5, 0.0]
    name = "BraTS-GLI-00003-000-t2f.nii.gz"
    save_nifti(root / "BraTS-GLI-00003-000" / name, varying((8, 8, 8)), shifted)
    only_problem(
        check_dataset(root, progress=False),
        "BraTS-GLI-00003-000",
        name,
        "affine differs from t1 sequence BraTS-GLI-00003-000-t1n.nii.gz by up to 0.5",
        "expected co-registered files",
    )
    assert check_dataset(root, affine_tol=0.6, progress=False).ok


def test_spacing_mismatch_beyond_tolerance(make_dataset, save_nifti):
    root = make_dataset("brats2021")
    name = "BraTS2021_00001_seg.nii.gz"
    save_nifti(root / "BraTS2021_00001" / name, np.zeros((8, 8, 8), dtype=np.uint8), np.diag([1, 1, 1.2, 1]))
    only_problem(
        check_dataset(root, progress=False),
        "BraTS2021_00001",
        name,
        "voxel spacing (1, 1, 1.2) mm differs from t1 sequence BraTS2021_00001_t1.nii.gz (1, 1, 1) mm",
        "expected equal within 0.001 mm",
    )
    tiny = np.diag([1, 1, 1.0001, 1])
    save_nifti(root / "BraTS2021_00001" / name, np.zeros((8, 8, 8), dtype=np.uint8), tiny)
    assert check_dataset(root, progress=False).ok  # within the default tolerances


def test_label_values_outside_the_layout(make_dataset, tumour_label, save_nifti):
    root = make_dataset("brats2021")
    name = "BraTS2021_00003_seg.nii.gz"
    save_nifti(root / "BraTS2021_00003" / name, tumour_label("brats2023"))  # ET = 3, a BraTS 2023 label
    only_problem(
        check_dataset(root, progress=False),
        "BraTS2021_00003",
        name,
        "label values [3] are not brats2021 labels",
        "expected values in [0, 1, 2, 4]",
        "wrong layout?",
    )


def test_non_integer_label_values(make_dataset, save_nifti):
    root = make_dataset("msd")
    label = np.zeros((8, 8, 8), dtype=np.float32)
    label[0, 0, 0] = 0.5
    save_nifti(root / "labelsTr" / "BRATS_001.nii.gz", label)
    only_problem(
        check_dataset(root, progress=False), "BRATS_001", "BRATS_001.nii.gz", "non-integer label values"
    )


def test_nan_and_inf_voxels(make_dataset, save_nifti):
    root = make_dataset("brats2021")
    volume = varying((8, 8, 8))
    volume[0, 0, :3] = np.nan
    volume[1, 1, 1] = -np.inf
    name = "BraTS2021_00002_flair.nii.gz"
    save_nifti(root / "BraTS2021_00002" / name, volume)
    only_problem(
        check_dataset(root, progress=False),
        "BraTS2021_00002",
        name,
        "3 NaN and 1 Inf voxels; expected finite values",
    )


def test_all_zero_sequence(make_dataset, save_nifti):
    root = make_dataset("brats2023")
    name = "BraTS-GLI-00001-000-t1c.nii.gz"
    save_nifti(root / "BraTS-GLI-00001-000" / name, np.zeros((8, 8, 8), dtype=np.float32))
    only_problem(
        check_dataset(root, progress=False),
        "BraTS-GLI-00001-000",
        name,
        "all voxels are zero; expected an MRI t1ce sequence",
    )


def test_all_zero_channel_of_an_msd_image(make_dataset, write_brats_case):
    root = make_dataset("msd")
    write_brats_case(root, "BRATS_002", "msd", images={"t2": np.zeros((8, 8, 8), dtype=np.float32)})
    only_problem(
        check_dataset(root, progress=False),
        "BRATS_002",
        "BRATS_002.nii.gz",
        "channel 3 (t2): all voxels are zero",
    )


@pytest.mark.parametrize(
    ("background", "message"),
    [(1.5, "all voxels are 1.5"), (0.0, "all 216 non-zero voxels are 1.5")],
    ids=["whole-volume", "inside-the-brain"],
)
def test_a_constant_sequence_is_flagged_like_an_all_zero_one(make_dataset, save_nifti, background, message):
    root = make_dataset("brats2021")
    volume = np.full((8, 8, 8), background, dtype=np.float32)
    volume[1:-1, 1:-1, 1:-1] = 1.5  # a brain of one value
    name = "BraTS2021_00002_t2.nii.gz"
    save_nifti(root / "BraTS2021_00002" / name, volume)
    only_problem(
        check_dataset(root, progress=False),
        "BraTS2021_00002",
        name,
        f"{message}; expected an MRI t2 sequence",
    )


def test_a_constant_channel_of_an_msd_image(make_dataset, write_brats_case):
    root = make_dataset("msd")
    write_brats_case(root, "BRATS_003", "msd", images={"t1ce": np.full((8, 8, 8), 7, dtype=np.float32)})
    only_problem(
        check_dataset(root, progress=False),
        "BRATS_003",
        "BRATS_003.nii.gz",
        "channel 2 (t1ce): all voxels are 7",
    )


def test_a_case_with_upper_case_file_names_is_checked_not_dropped(make_dataset, write_brats_case, capsys):
    root = make_dataset("brats2023")
    for path in write_brats_case(root, "BraTS-GLI-00004-000", "brats2023", seed=4).values():
        path.rename(path.with_name(path.name.upper()))  # BRATS-GLI-00004-000-T1N.NII.GZ
    code, out = run_cli(capsys, root)
    assert code == 0 and out.strip() == f"OK: 4 cases (brats2023) in {root}, no problems found"


def test_two_files_for_one_sequence_fail_the_check_naming_both(make_dataset, save_nifti, capsys):
    root = make_dataset("brats2021")
    save_nifti(root / "BraTS2021_00003" / "BraTS2021_00003_flair.nii", varying((8, 8, 8)))
    only_problem(
        check_dataset(root, progress=False),
        "BraTS2021_00003",
        "BraTS2021_00003_flair.nii",
        "flair sequence also in BraTS2021_00003_flair.nii.gz; expected one file",
    )
    code, out = run_cli(capsys, root)
    assert code == 1
    assert (
        "BraTS2021_00003/BraTS2021_00003_flair.nii: flair sequence also in BraTS2021_00003_flair.nii.gz"
        in out
    )


def test_files_in_no_case_are_listed_and_the_check_still_passes(make_dataset, save_nifti, capsys):
    root = make_dataset("brats2021")
    save_nifti(root / "BraTS2021_00001" / "BraTS2021_00001_t1_v2.nii.gz", varying((8, 8, 8)))
    (root / "BraTS2021_00007").mkdir()
    report = check_dataset(root, progress=False)
    assert report.ok and report.n_cases == 3
    assert [p.file for p in report.skipped] == [
        root / "BraTS2021_00001" / "BraTS2021_00001_t1_v2.nii.gz",
        root / "BraTS2021_00007",
    ]
    code, out = run_cli(capsys, root)
    assert code == 0
    assert out.splitlines()[:3] == [
        "(skipped, in no case):",
        "  BraTS2021_00001/BraTS2021_00001_t1_v2.nii.gz: matches no case file name; expected brats2021: "
        "<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz",
        "  BraTS2021_00007: a folder beside the case folders with no brats2021 case in it",
    ]
    assert out.splitlines()[-1] == (
        f"OK: 3 cases (brats2021) in {root}, no problems found; "
        "2 file(s) or folder(s) skipped, in no case (listed above)"
    )


def test_msd_image_without_four_channels(make_dataset, save_nifti):
    root = make_dataset("msd")
    save_nifti(root / "imagesTr" / "BRATS_001.nii.gz", np.ones((8, 8, 8, 3), dtype=np.float32))
    only_problem(
        check_dataset(root, progress=False),
        "BRATS_001",
        "BRATS_001.nii.gz",
        "shape (8, 8, 8, 3); expected (H, W, D, 4) with channels flair, t1, t1ce, t2",
    )


def test_truncated_nii_gz(make_dataset):
    root = make_dataset("brats2021")
    path = root / "BraTS2021_00001" / "BraTS2021_00001_t2.nii.gz"
    path.write_bytes(path.read_bytes()[:-200])
    only_problem(
        check_dataset(root, progress=False),
        "BraTS2021_00001",
        path.name,
        "cannot read t2 sequence",
        "expected a readable NIfTI file",
    )


def test_corrupt_file(make_dataset):
    root = make_dataset("brats2023")
    path = root / "BraTS-GLI-00002-000" / "BraTS-GLI-00002-000-seg.nii.gz"
    path.write_bytes(b"this is not a NIfTI file")
    only_problem(check_dataset(root, progress=False), "BraTS-GLI-00002-000", path.name, "cannot read label")


def test_datalist_pointing_at_missing_files(make_dataset, tmp_path, capsys):
    root = make_dataset("brats2021", n=4)
    path = write_datalist(make_datalist(discover_cases(root)), tmp_path / "datalist.json")
    gone = root / "BraTS2021_00004" / "BraTS2021_00004_seg.nii.gz"
    gone.unlink()
    only_problem(
        check_dataset(datalist=path, progress=False), "BraTS2021_00004", gone.name, "label file not found"
    )
    code, out = run_cli(capsys, "--datalist", path)
    assert code == 1 and "BraTS2021_00004_seg.nii.gz: label file not found" in out
    assert out.splitlines()[-1] == f"FAILED: 1 problem in 1 of 4 cases (brats2021) in {path}"


def test_a_clean_datalist_and_folder_together(make_dataset, tmp_path, capsys):
    root = make_dataset("msd")
    path = write_datalist(make_datalist(discover_cases(root)), tmp_path / "datalist.json")
    report = check_dataset(root, datalist=path, progress=False)
    assert report.ok and report.n_cases == 3  # the datalist's cases are the folder's: checked once
    assert run_cli(capsys, root, "--datalist", path)[0] == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{oops", "not valid JSON"),
        ('{"training": []}', "no 'layout' field"),
        ('{"layout": "brats2019", "training": []}', "unknown layout 'brats2019'"),
        (
            '{"layout": "brats2021", "training": [{"image": ["a.nii.gz"], "label": "s.nii.gz"}]}',
            "expected a list of 4",
        ),
    ],
)
def test_malformed_datalists(tmp_path, content, message):
    path = tmp_path / "datalist.json"
    path.write_text(content)
    only_problem(check_dataset(datalist=path, progress=False), None, "datalist.json", message)


def test_every_problem_is_reported_at_once(make_dataset, save_nifti):
    root = make_dataset("brats2021", n=4)
    (root / "BraTS2021_00001" / "BraTS2021_00001_flair.nii.gz").unlink()
    save_nifti(root / "BraTS2021_00003" / "BraTS2021_00003_t1.nii.gz", np.zeros((8, 8, 8), dtype=np.float32))
    (root / "BraTS2021_00004" / "BraTS2021_00004_seg.nii.gz").write_bytes(b"")
    report = check_dataset(root, progress=False)
    assert [p.case_id for p in report.problems] == ["BraTS2021_00001", "BraTS2021_00003", "BraTS2021_00004"]
    assert report.summary() == f"FAILED: 3 problems in 3 of 4 cases (brats2021) in {root}"


def test_check_modifies_nothing(make_dataset, save_nifti):
    root = make_dataset("brats2021")
    save_nifti(root / "BraTS2021_00002" / "BraTS2021_00002_t2.nii.gz", np.full((8, 8, 8), np.nan, np.float32))
    (root / "BraTS2021_00003" / "BraTS2021_00003_t1.nii.gz").write_bytes(b"junk")

    def snapshot():
        return {
            p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    before = snapshot()
    assert not check_dataset(root, progress=False).ok
    assert snapshot() == before


def test_cli_needs_a_folder_or_a_datalist(capsys):
    with pytest.raises(SystemExit) as info:
        main(["check"])
    assert info.value.code == 2
    assert "expected a dataset folder DIR, --datalist FILE, or both" in capsys.readouterr().err


def test_api_needs_a_folder_or_a_datalist():
    with pytest.raises(ValueError, match="nothing to check"):
        check_dataset()


def test_cli_output_for_the_datalist_json(tmp_path, capsys):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"layout": "msd", "training": [{"image": "imagesTr/x.nii.gz"}]}))
    code, out = run_cli(capsys, "--datalist", path)
    assert code == 1
    assert "x:\n  d.json: training[0] has no 'label'; expected a segmentation in 'training'" in out
