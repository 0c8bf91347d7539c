import numpy as np
import pytest

from cggm_seg.apps.brats.discovery import (
    case_id_of,
    detect_layout,
    discover_cases,
    require_complete,
    skipped_paths,
)
from cggm_seg.apps.brats.layouts import MODALITIES


@pytest.mark.parametrize(
    ("layout", "ids", "t1ce_name"),
    [
        (
            "brats2021",
            ["BraTS2021_00001", "BraTS2021_00002", "BraTS2021_00003"],
            "BraTS2021_00001_t1ce.nii.gz",
        ),
        (
            "brats2023",
            ["BraTS-GLI-00001-000", "BraTS-GLI-00002-000", "BraTS-GLI-00003-000"],
            "BraTS-GLI-00001-000-t1c.nii.gz",
        ),
    ],
)
def test_per_file_layouts(make_dataset, layout, ids, t1ce_name):
    root = make_dataset(layout)
    cases = discover_cases(root, layout)
    assert [c.case_id for c in cases] == ids
    first = cases[0]
    assert first.layout == layout and first.folder == root / ids[0] and first.is_complete
    assert list(first.images) == list(MODALITIES)
    assert first.images["t1ce"].name == t1ce_name
    assert first.image == [first.images[m] for m in MODALITIES]
    assert first.label.name == f"{ids[0]}{'_' if layout == 'brats2021' else '-'}seg.nii.gz"
    assert first.image_4d is None
    assert first.files == [*first.image, first.label]


def test_msd_layout_with_test_images_and_macos_forks(make_dataset, write_brats_case):
    root = make_dataset("msd")
    write_brats_case(root, "BRATS_900", "msd", subset="Ts", with_label=False)
    (root / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble fork
    cases = discover_cases(root)
    assert [c.case_id for c in cases] == ["BRATS_001", "BRATS_002", "BRATS_003", "BRATS_900"]
    assert cases[0].image == root / "imagesTr" / "BRATS_001.nii.gz" == cases[0].image_4d
    assert cases[0].label == root / "labelsTr" / "BRATS_001.nii.gz"
    assert cases[0].images == {}
    test_case = cases[-1]
    assert test_case.folder == root / "imagesTs" and test_case.label is None and test_case.is_complete


@pytest.mark.parametrize("layout", ["brats2021", "brats2023", "msd"])
def test_detect_layout(make_dataset, layout):
    assert detect_layout(make_dataset(layout)).name == layout


def test_per_file_search_is_recursive_and_accepts_uncompressed_files(tmp_path, write_brats_case):
    write_brats_case(tmp_path / "release" / "TrainingData", "BraTS2021_00000", ext=".nii")
    (case,) = discover_cases(tmp_path)
    assert case.case_id == "BraTS2021_00000" and case.is_complete
    assert case.images["flair"].name == "BraTS2021_00000_flair.nii"


def test_detect_layout_names_folder_and_expectation_when_nothing_matches(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no BraTS layout recognised") as info:
        detect_layout(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz" in message and "imagesTr" in message


def test_detect_layout_refuses_ambiguous_folders(tmp_path, write_brats_case):
    write_brats_case(tmp_path, "BraTS2021_00000", "brats2021")
    write_brats_case(tmp_path, "BraTS-GLI-00000-000", "brats2023")
    with pytest.raises(ValueError, match=r"several BraTS layouts.*brats2021.*brats2023.*explicitly"):
        detect_layout(tmp_path)
    # An explicit layout picks its own files and ignores the others.
    assert [c.case_id for c in discover_cases(tmp_path, "brats2023")] == ["BraTS-GLI-00000-000"]


def test_not_a_folder(tmp_path):
    with pytest.raises(ValueError, match=r"missing does not exist or is not a folder"):
        discover_cases(tmp_path / "missing")


def test_missing_files_are_recorded_and_strict_helper_raises(make_dataset, write_brats_case):
    root = make_dataset("brats2021")
    write_brats_case(root, "BraTS2021_00009", skip=("t1ce",))
    cases = discover_cases(root)
    incomplete = cases[-1]
    assert incomplete.missing == {"t1ce": root / "BraTS2021_00009" / "BraTS2021_00009_t1ce.nii.gz"}
    assert list(incomplete.images) == ["t1", "t2", "flair"]
    with pytest.raises(ValueError, match=r"misses t1ce: expected .*BraTS2021_00009_t1ce.nii.gz"):
        _ = incomplete.image
    with pytest.raises(
        ValueError, match=r"'BraTS2021_00009'.*t1ce \(expected .*BraTS2021_00009_t1ce.nii.gz\)"
    ):
        require_complete(cases)
    assert require_complete(cases[:-1]) == cases[:-1]


def test_a_case_without_label_in_a_labelled_release_misses_it(make_dataset, write_brats_case):
    root = make_dataset("brats2023")
    write_brats_case(root, "BraTS-GLI-00009-000", "brats2023", with_label=False)
    assert discover_cases(root)[-1].missing == {
        "seg": root / "BraTS-GLI-00009-000" / "BraTS-GLI-00009-000-seg.nii.gz"
    }


def test_an_unlabelled_release_misses_nothing(make_dataset):
    cases = discover_cases(make_dataset("brats2021", with_label=False))
    assert all(c.is_complete and c.label is None for c in cases)


def test_msd_missing_image_or_label(make_dataset):
    root = make_dataset("msd")
    (root / "imagesTr" / "BRATS_002.nii.gz").unlink()
    (root / "labelsTr" / "BRATS_003.nii.gz").unlink()
    cases = {c.case_id: c for c in discover_cases(root)}
    assert cases["BRATS_002"].missing == {"image": root / "imagesTr" / "BRATS_002.nii.gz"}
    assert cases["BRATS_003"].missing == {"seg": root / "labelsTr" / "BRATS_003.nii.gz"}


def test_same_case_id_in_two_folders_gives_two_cases(tmp_path, write_brats_case):
    write_brats_case(tmp_path / "a", "BraTS2021_00001")
    write_brats_case(tmp_path / "b", "BraTS2021_00001")
    cases = discover_cases(tmp_path)
    assert [c.folder for c in cases] == [
        tmp_path / "a" / "BraTS2021_00001",
        tmp_path / "b" / "BraTS2021_00001",
    ]
    with pytest.raises(
        ValueError, match=r"'BraTS2021_00001' found 2 times: in .*a/BraTS2021_00001, .*b/BraTS"
    ):
        require_complete(cases)


def test_discovery_is_deterministic(make_dataset):
    root = make_dataset("brats2023", n=5)
    assert discover_cases(root) == discover_cases(root)


def test_case_id_of_file_names():
    assert case_id_of("x/BraTS2021_00000_t1ce.nii.gz", "brats2021") == "BraTS2021_00000"
    assert case_id_of("BraTS-GLI-00000-000-seg.nii", "brats2023") == "BraTS-GLI-00000-000"
    assert case_id_of("imagesTr/BRATS_001.nii.gz", "msd") == "BRATS_001"
    assert case_id_of("prediction.nii.gz", "brats2021") == "prediction"


def _upper_case_names(folder):
    """Rename a case's files to upper-case suffixes and extensions (``x_t1.nii.gz`` -> ``x_T1.NII.GZ``)."""
    for path in list(folder.iterdir()):
        stem, _, suffix = path.name[: -len(".nii.gz")].rpartition("_")
        path.rename(path.with_name(f"{stem}_{suffix.upper()}.NII.GZ"))


def test_upper_case_suffixes_and_extensions_are_accepted(make_dataset, write_brats_case):
    root = make_dataset("brats2021")
    write_brats_case(root, "BraTS2021_00004", seed=4)
    _upper_case_names(root / "BraTS2021_00004")
    cases = discover_cases(root)
    assert [c.case_id for c in cases][-1] == "BraTS2021_00004" and len(cases) == 4
    shouted = cases[-1]
    assert shouted.is_complete and not shouted.duplicates
    assert shouted.images["t1ce"].name == "BraTS2021_00004_T1CE.NII.GZ"
    assert shouted.label.name == "BraTS2021_00004_SEG.NII.GZ"
    assert case_id_of(shouted.images["flair"], "brats2021") == "BraTS2021_00004"
    assert skipped_paths(root) == []


def test_upper_case_files_alone_are_recognised(tmp_path, write_brats_case):
    write_brats_case(tmp_path, "BraTS2021_00001")
    _upper_case_names(tmp_path / "BraTS2021_00001")
    assert detect_layout(tmp_path).name == "brats2021"
    write_brats_case(tmp_path / "msd", "BRATS_001", "msd", ext=".NII.GZ")
    (case,) = discover_cases(tmp_path / "msd")
    assert case.case_id == "BRATS_001" and case.is_complete and case.image_4d.name == "BRATS_001.NII.GZ"


@pytest.mark.parametrize("other", ["BraTS2021_00002_t1.nii", "BraTS2021_00002_T1.nii.gz"])
def test_two_files_for_one_sequence_are_an_error_naming_both(make_dataset, save_nifti, other):
    root = make_dataset("brats2021")
    folder = root / "BraTS2021_00002"
    save_nifti(folder / other, np.ones((8, 8, 8), dtype=np.float32))
    case = discover_cases(root)[1]
    both = tuple(sorted([folder / "BraTS2021_00002_t1.nii.gz", folder / other]))
    assert case.duplicates == {"t1": both}
    for raises in (lambda: case.image, lambda: require_complete([case])):
        with pytest.raises(ValueError, match="2 files for the t1 sequence") as info:
            raises()
        assert all(str(path) in str(info.value) for path in both)


def test_two_files_for_one_msd_image_are_an_error_naming_both(make_dataset, write_brats_case):
    root = make_dataset("msd")
    write_brats_case(root, "BRATS_002", "msd", ext=".nii")
    case = discover_cases(root)[1]
    assert case.duplicates == {
        "image": (root / "imagesTr" / "BRATS_002.nii", root / "imagesTr" / "BRATS_002.nii.gz"),
        "seg": (root / "labelsTr" / "BRATS_002.nii", root / "labelsTr" / "BRATS_002.nii.gz"),
    }
    with pytest.raises(ValueError, match=r"2 files for the 4D image \(.*BRATS_002.nii, .*BRATS_002.nii.gz\)"):
        require_complete([case])


def test_skipped_paths_lists_what_looks_like_data_but_belongs_to_no_case(make_dataset, save_nifti):
    root = make_dataset("brats2021")
    volume = np.ones((8, 8, 8), dtype=np.float32)
    renamed = save_nifti(root / "BraTS2021_00001" / "BraTS2021_00001_t1_old.nii.gz", volume)
    backup = root / "BraTS2021_00002" / "BraTS2021_00002_flair.nii.gz.bak"
    backup.write_bytes((root / "BraTS2021_00002" / "BraTS2021_00002_flair.nii.gz").read_bytes())
    unprefixed = save_nifti(root / "BraTS2021_00009" / "t2.nii.gz", volume)
    (root / "BraTS2021_00010").mkdir()
    save_nifti(root / ".trash" / "BraTS2021_00011_t1.nii", volume)  # hidden: ignored
    save_nifti(root / "BraTS2021_00003" / "._BraTS2021_00003_t1.nii.gz", volume)  # macOS fork: ignored
    skipped = dict(skipped_paths(root))
    assert sorted(skipped) == [renamed, backup, unprefixed, root / "BraTS2021_00010"]
    assert skipped[renamed].startswith("matches no case file name; expected brats2021: <case>/<case>_{t1,")
    assert skipped[backup] == "not a .nii or .nii.gz file"
    assert (
        skipped[root / "BraTS2021_00010"] == "a folder beside the case folders with no brats2021 case in it"
    )
    assert [c.case_id for c in discover_cases(root)] == [
        "BraTS2021_00001",
        "BraTS2021_00002",
        "BraTS2021_00003",
    ]


def test_skipped_paths_of_an_msd_folder(make_dataset, save_nifti):
    root = make_dataset("msd")
    volume = np.ones((8, 8, 8), dtype=np.float32)
    nested = save_nifti(root / "imagesTr" / "old" / "BRATS_009.nii.gz", volume)
    beside = save_nifti(root / "mask.nii.gz", volume)
    assert [path for path, _ in skipped_paths(root)] == [nested, beside]
    assert "outside imagesTr, imagesTs, labelsTr, labelsTs" in skipped_paths(root)[0][1]
