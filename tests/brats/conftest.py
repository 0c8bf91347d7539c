"""Tiny BraTS datasets written with nibabel into tmp_path, in any of the three layouts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cggm_seg.apps.brats.layouts import MODALITIES, get_layout

#: Mean intensity written for each sequence, so that a test can tell the channels apart.
LEVELS: dict[str, float] = {"t1": 1.0, "t1ce": 2.0, "t2": 3.0, "flair": 4.0}

#: (oedema, tumour core without ET, enhancing tumour) label values of each layout.
TUMOUR_VALUES: dict[str, tuple[int, int, int]] = {
    "brats2021": (2, 1, 4),
    "brats2023": (2, 1, 3),
    "msd": (1, 2, 3),
}


def tumour_label(layout: str, shape: Sequence[int] = (8, 8, 8)) -> np.ndarray:
    """Nested cubes: oedema around a tumour core around enhancing tumour, in ``layout``'s values."""
    oedema, core, enhancing = TUMOUR_VALUES[layout]
    label = np.zeros(shape, dtype=np.uint8)
    label[1:-1, 1:-1, 1:-1] = oedema
    label[2:-2, 2:-2, 2:-2] = core
    label[3:-3, 3:-3, 3:-3] = enhancing
    return label


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``data`` to ``path`` (parents created) with ``affine`` (default: 1 mm identity)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def write_brats_case(
    root: Path,
    case_id: str,
    layout: str = "brats2021",
    *,
    shape: Sequence[int] = (8, 8, 8),
    affine: np.ndarray | None = None,
    label: np.ndarray | None = None,
    with_label: bool = True,
    images: dict[str, np.ndarray] | None = None,
    skip: Sequence[str] = (),
    ext: str = ".nii.gz",
    subset: str = "Tr",
    seed: int = 0,
) -> dict[str, Path]:
    """Write one case of ``layout`` under ``root`` and return role (modality, ``image``, ``seg``) -> path.

    Sequences are float32 noise around :data:`LEVELS`; ``images`` replaces some of them; ``skip``
    leaves modalities (or ``"seg"``) unwritten; ``label`` defaults to :func:`tumour_label`. For
    ``msd`` the four sequences go into ``images<subset>/<case_id>.nii.gz`` (channels last, in the
    layout's file order) and the label into ``labels<subset>/``.
    """
    spec = get_layout(layout)
    rng = np.random.default_rng(seed)
    volumes = {m: (LEVELS[m] + 0.1 * rng.standard_normal(shape)).astype(np.float32) for m in MODALITIES}
    volumes.update(images or {})
    label = tumour_label(layout, shape) if label is None else label
    written: dict[str, Path] = {}
    if spec.is_4d:
        stacked = np.stack([volumes[m] for m in spec.msd_channels], axis=-1)
        written["image"] = save_nifti(root / f"images{subset}" / f"{case_id}{ext}", stacked, affine)
        if with_label and "seg" not in skip:
            written["seg"] = save_nifti(root / f"labels{subset}" / f"{case_id}{ext}", label, affine)
        return written
    for modality in MODALITIES:
        if modality not in skip:
            path = root / case_id / spec.file_name(case_id, modality, ext)
            written[modality] = save_nifti(path, volumes[modality], affine)
    if with_label and "seg" not in skip:
        written["seg"] = save_nifti(root / case_id / spec.file_name(case_id, "seg", ext), label, affine)
    return written


def case_ids(layout: str, n: int) -> list[str]:
    """``n`` case ids in the naming style of ``layout``."""
    style = {"brats2021": "BraTS2021_{:05d}", "brats2023": "BraTS-GLI-{:05d}-000", "msd": "BRATS_{:03d}"}
    return [style[layout].format(i + 1) for i in range(n)]


# Tests reach the helpers through fixtures: `import conftest` would be ambiguous across test folders.


@pytest.fixture(name="write_brats_case")
def write_brats_case_fixture() -> Callable[..., dict[str, Path]]:
    """:func:`write_brats_case`: ``write_brats_case(root, case_id, layout, shape=..., label=...)``."""
    return write_brats_case


@pytest.fixture(name="save_nifti")
def save_nifti_fixture() -> Callable[..., Path]:
    """:func:`save_nifti`: ``save_nifti(path, data, affine=None)``."""
    return save_nifti


@pytest.fixture(name="tumour_label")
def tumour_label_fixture() -> Callable[..., np.ndarray]:
    """:func:`tumour_label`: ``tumour_label(layout, shape=(8, 8, 8))``."""
    return tumour_label


@pytest.fixture
def levels() -> dict[str, float]:
    """:data:`LEVELS`: the mean intensity of each written sequence."""
    return dict(LEVELS)


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[..., Path]:
    """``make_dataset(layout, n=3, **kw)``: a clean dataset of ``n`` cases under a fresh folder."""

    def make(layout: str, n: int = 3, name: str | None = None, **kwargs) -> Path:
        root = tmp_path / (name or layout)
        for index, case_id in enumerate(case_ids(layout, n)):
            write_brats_case(root, case_id, layout, seed=index, **kwargs)
        return root

    return make
