"""The axial case montage: any layout in, a non-trivial PNG out."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from matplotlib import image as mpimg

from cggm_seg.apps.brats.phantom import PhantomConfig, write_phantom_dataset
from cggm_seg.apps.brats.preview import read_case, render_case_preview


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """One 4 mm phantom case in each layout: layout -> path of the case to preview."""
    root = tmp_path_factory.mktemp("phantoms")
    paths = {}
    for layout in ("brats2021", "brats2023", "msd"):
        (case_id,) = write_phantom_dataset(
            root / layout, cases=1, seed=2, layout=layout, config=PhantomConfig(spacing=4.0), progress=False
        )
        msd_image = root / layout / "imagesTr" / f"{case_id}.nii.gz"
        paths[layout] = msd_image if layout == "msd" else root / layout / case_id
    return paths


def test_every_layout_reads_to_the_same_case(datasets):
    cases = {layout: read_case(path) for layout, path in datasets.items()}
    reference = cases["brats2021"]
    for layout, case in cases.items():
        assert case.layout == layout
        # Labels come back in BraTS 2021 values whatever the layout stored.
        np.testing.assert_array_equal(case.label, reference.label)
        for modality, image in reference.images.items():
            np.testing.assert_array_equal(case.images[modality], image)
    assert set(np.unique(reference.label)) == {0, 1, 2, 4}
    # The MSD dataset root reads its first case.
    assert read_case(datasets["msd"].parent.parent).case_id == "BRATS_000"


@pytest.mark.parametrize("layout", ["brats2021", "msd"])
def test_png_is_written_and_shows_images_and_labels(tmp_path, datasets, layout):
    png = render_case_preview(datasets[layout], tmp_path / "out" / "preview.png", n_slices=2)
    assert png.is_file() and png.stat().st_size > 10_000
    pixels = mpimg.imread(png)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 500
    assert pixels[..., :3].std() > 0.1
    # The label overlay adds saturated colours to an otherwise grey montage.
    saturation = pixels[..., :3].max(axis=-1) - pixels[..., :3].min(axis=-1)
    assert (saturation > 0.5).sum() > 100


def test_unreadable_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_case(tmp_path / "missing")
    (tmp_path / "empty_case").mkdir()
    with pytest.raises(ValueError, match="no BraTS case files found"):
        read_case(tmp_path / "empty_case")
    mismatched = tmp_path / "BraTS2021_00009"
    mismatched.mkdir()
    for suffix, shape in (("t1", (8, 8, 8)), ("t1ce", (8, 8, 8)), ("t2", (8, 8, 8)), ("flair", (8, 8, 6))):
        image = nib.Nifti1Image(np.ones(shape, dtype=np.float32), np.eye(4))
        nib.save(image, mismatched / f"BraTS2021_00009_{suffix}.nii.gz")
    with pytest.raises(ValueError, match="BraTS2021_00009: expected 3D volumes of one shape"):
        read_case(mismatched)
    with pytest.raises(ValueError, match="n_slices"):
        render_case_preview(tmp_path / "empty_case", tmp_path / "x.png", n_slices=0)
