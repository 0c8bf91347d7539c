import pytest

from cggm_seg.apps.brats.layouts import LAYOUTS, MODALITIES, REGIONS, get_layout


def test_canonical_orders():
    assert MODALITIES == ("t1", "t1ce", "t2", "flair")
    assert REGIONS == ("tc", "wt", "et")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("brats2021", {"tc": (1, 4), "wt": (1, 2, 4), "et": (4,)}),
        ("brats2023", {"tc": (1, 3), "wt": (1, 2, 3), "et": (3,)}),
        ("msd", {"tc": (2, 3), "wt": (1, 2, 3), "et": (3,)}),
    ],
)
def test_region_definitions(name, expected):
    assert get_layout(name).region_labels == expected


def test_msd_channel_index_maps_file_channels_to_canonical_order():
    # MSD files hold FLAIR, T1w, T1gd, T2w: t1 is file channel 1, ..., flair channel 0.
    assert get_layout("msd").channel_index() == (1, 2, 3, 0)
    with pytest.raises(ValueError, match="one file per sequence"):
        get_layout("brats2021").channel_index()


def test_file_names():
    assert get_layout("brats2021").file_name("BraTS2021_00000", "t1ce") == "BraTS2021_00000_t1ce.nii.gz"
    assert (
        get_layout("brats2023").file_name("BraTS-GLI-00000-000", "flair") == "BraTS-GLI-00000-000-t2f.nii.gz"
    )
    assert (
        get_layout("brats2023").file_name("BraTS-GLI-00000-000", "seg", ".nii")
        == "BraTS-GLI-00000-000-seg.nii"
    )


def test_get_layout_accepts_layouts_and_names_any_case():
    assert get_layout(LAYOUTS["msd"]) is LAYOUTS["msd"]
    assert get_layout("BraTS2021") is LAYOUTS["brats2021"]
    with pytest.raises(ValueError, match=r"unknown BraTS layout 'brats2019'.*brats2021"):
        get_layout("brats2019")
