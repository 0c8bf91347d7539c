import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, ConvertToMultiChannelBasedOnBratsClasses

from cggm_seg.apps.brats.layouts import MODALITIES, get_layout
from cggm_seg.apps.brats.transforms import (
    ConvertToRegionsd,
    OrderModalitiesd,
    RegionsToLabeld,
    label_to_regions,
    load_transforms,
    order_modalities,
    regions_to_label,
)

# One voxel per label value, background first; expected [TC, WT, ET] channels computed by hand.
HAND_MADE = {
    "brats2021": ([0, 1, 2, 4], [[0, 1, 0, 1], [0, 1, 1, 1], [0, 0, 0, 1]]),
    "brats2023": ([0, 1, 2, 3], [[0, 1, 0, 1], [0, 1, 1, 1], [0, 0, 0, 1]]),
    # MSD: 1 oedema, 2 non-enhancing, 3 enhancing -> TC = 2 + 3, WT = 1 + 2 + 3, ET = 3.
    "msd": ([0, 1, 2, 3], [[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 1]]),
}


def as_label(values):
    return np.array(values, dtype=np.uint8).reshape(1, -1, 1, 1)


@pytest.mark.parametrize("layout", sorted(HAND_MADE))
def test_label_to_regions_matches_hand_computed_channels(layout):
    values, expected = HAND_MADE[layout]
    regions = label_to_regions(torch.as_tensor(as_label(values)), layout)
    assert regions.dtype == torch.float32
    assert regions.shape == (3, 4, 1, 1)
    np.testing.assert_array_equal(regions[:, :, 0, 0].numpy(), expected)


@pytest.mark.parametrize("layout", sorted(HAND_MADE))
def test_label_to_regions_numpy_in_numpy_out(layout):
    values, expected = HAND_MADE[layout]
    regions = label_to_regions(as_label(values), layout)
    assert isinstance(regions, np.ndarray) and regions.dtype == np.float32
    np.testing.assert_array_equal(regions[:, :, 0, 0], expected)


def test_msd_differs_from_monai_brats_classes_where_monai_is_wrong():
    # MONAI's converter (et_label=3) treats 1 as core and 2 as oedema: wrong for MSD labels.
    label = as_label([0, 1, 2, 3])
    monai_regions = ConvertToMultiChannelBasedOnBratsClasses(et_label=3)(label)
    ours = label_to_regions(label, "msd")
    np.testing.assert_array_equal(ours[1], monai_regions[1])  # WT agrees
    assert not np.array_equal(ours[0], monai_regions[0])  # TC does not


def test_brats2021_agrees_with_monai_brats_classes():
    label = as_label([0, 1, 2, 4])
    np.testing.assert_array_equal(
        label_to_regions(label, "brats2021"),
        ConvertToMultiChannelBasedOnBratsClasses()(label).astype(np.float32),
    )


def test_label_to_regions_keeps_meta_and_rounds_float_labels():
    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64))
    label = MetaTensor(torch.tensor([0.0, 1.0, 2.0, 3.9999]).reshape(1, 4, 1, 1), affine=affine)
    label.meta["filename_or_obj"] = "case_seg.nii.gz"
    regions = label_to_regions(label, "brats2021")
    assert isinstance(regions, MetaTensor)
    assert regions.meta["filename_or_obj"] == "case_seg.nii.gz"
    torch.testing.assert_close(regions.affine, affine)
    np.testing.assert_array_equal(regions[2, :, 0, 0].numpy(), [0, 0, 0, 1])


def test_label_to_regions_rejects_labels_without_one_channel():
    with pytest.raises(ValueError, match=r"shape \(4, 4, 4\).*\(1, H, W, D\).*EnsureChannelFirstd"):
        label_to_regions(np.zeros((4, 4, 4)), "brats2021")


@pytest.mark.parametrize(
    ("layout", "labels"), [("brats2021", [0, 1, 2, 4]), ("brats2023", [0, 1, 2, 3]), ("msd", [0, 1, 2, 3])]
)
def test_regions_to_label_inverts_label_to_regions(layout, labels):
    label = torch.as_tensor(as_label(labels))
    back = regions_to_label(label_to_regions(label, layout), layout)
    assert back.dtype == torch.uint8 and back.shape == label.shape
    torch.testing.assert_close(back, label)


def test_regions_to_label_hand_made_priority_and_threshold():
    # Channels TC, WT, ET for 5 voxels: none, WT only, TC+WT, ET alone (inconsistent: outside TC
    # and WT, so dropped by the nesting), all.
    regions = np.array([[0, 0, 0.9, 0, 1], [0, 0.6, 0.9, 0, 1], [0.4, 0, 0, 0.7, 1]], dtype=np.float32)
    regions = regions.reshape(3, 5, 1, 1)
    label = regions_to_label(regions, "msd")
    np.testing.assert_array_equal(label[0, :, 0, 0], [0, 1, 2, 0, 3])
    np.testing.assert_array_equal(regions_to_label(regions, "brats2021")[0, :, 0, 0], [0, 2, 1, 0, 4])
    # a lower threshold switches ET on in voxel 0, still outside TC and WT
    np.testing.assert_array_equal(
        regions_to_label(regions, "brats2021", threshold=0.3)[0, :, 0, 0], [0, 2, 1, 0, 4]
    )
    inside = np.array([[0.4], [0.9], [0.9]], dtype=np.float32).reshape(3, 1, 1, 1)  # TC 0.4: ET needs TC
    assert regions_to_label(inside, "brats2021")[0, 0, 0, 0] == 2
    assert regions_to_label(inside, "brats2021", threshold=0.3)[0, 0, 0, 0] == 4


def test_regions_to_labeld_keeps_meta():
    affine = torch.diag(torch.tensor([1.5, 1.5, 1.5, 1.0], dtype=torch.float64))
    pred = MetaTensor(torch.ones(3, 2, 2, 2, dtype=torch.bool), affine=affine)
    out = RegionsToLabeld("pred", "brats2023")({"pred": pred})["pred"]
    assert isinstance(out, MetaTensor) and out.shape == (1, 2, 2, 2)
    torch.testing.assert_close(out.affine, affine)
    assert out.unique().tolist() == [3]


def test_regions_to_label_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match=r"expected 3 channels first \(TC, WT, ET"):
        regions_to_label(np.zeros((2, 4, 4, 4)), "msd")


def test_order_modalities_reorders_msd_channels(levels):
    msd = get_layout("msd")
    file_order = torch.stack([torch.full((2, 2, 2), levels[m]) for m in msd.msd_channels])
    image = MetaTensor(file_order, meta={"filename_or_obj": "BRATS_001.nii.gz"})
    ordered = OrderModalitiesd("image", "msd")({"image": image})["image"]
    assert isinstance(ordered, MetaTensor) and ordered.meta["filename_or_obj"] == "BRATS_001.nii.gz"
    assert [float(ordered[c].mean()) for c in range(4)] == [levels[m] for m in MODALITIES]
    np.testing.assert_array_equal(order_modalities(file_order.numpy(), msd), ordered.numpy())


def test_order_modalities_is_a_no_op_for_per_file_layouts():
    image = torch.arange(4.0).reshape(4, 1, 1, 1)
    assert order_modalities(image, "brats2021") is image


def test_order_modalities_names_the_file_when_channels_are_wrong():
    image = MetaTensor(torch.zeros(3, 2, 2, 2), meta={"filename_or_obj": "BRATS_007.nii.gz"})
    with pytest.raises(ValueError, match=r"BRATS_007.nii.gz has shape \(3, 2, 2, 2\).*expected 4 channels"):
        order_modalities(image, "msd")


def test_dictionary_transforms_honour_allow_missing_keys():
    assert ConvertToRegionsd("label", "msd", allow_missing_keys=True)({"image": 1}) == {"image": 1}
    with pytest.raises(KeyError):
        ConvertToRegionsd("label", "msd")({"image": 1})


@pytest.mark.parametrize("layout", ["brats2021", "brats2023", "msd"])
def test_load_transforms_give_canonical_tensors(tmp_path, write_brats_case, tumour_label, levels, layout):
    files = write_brats_case(tmp_path, "case1", layout)
    image = files["image"] if layout == "msd" else [str(files[m]) for m in MODALITIES]
    data = Compose(load_transforms(layout))({"image": image, "label": str(files["seg"])})
    assert data["image"].shape == (4, 8, 8, 8)
    means = [round(float(data["image"][c].mean())) for c in range(4)]
    assert means == [levels[m] for m in MODALITIES]
    expected = label_to_regions(tumour_label(layout)[None], layout)
    assert data["label"].dtype == torch.float32
    np.testing.assert_array_equal(data["label"].numpy(), expected)
    assert str(data["label"].meta["filename_or_obj"]).endswith(files["seg"].name)


def test_load_transforms_without_label(tmp_path, write_brats_case):
    files = write_brats_case(tmp_path, "BRATS_900", "msd", subset="Ts", with_label=False)
    data = Compose(load_transforms("msd", label_key=None))({"image": str(files["image"])})
    assert data["image"].shape == (4, 8, 8, 8)
