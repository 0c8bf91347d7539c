"""Axial montage of one BraTS case (any layout) as a PNG: a quick look at images and labels.

Rows are axial slices through the tumour, columns T1, T1ce, T2, FLAIR and the label drawn over
FLAIR (NCR, ED, ET in distinct colours). Volumes are reoriented to RAS and shown in neurological
convention (the patient's left on the left of the image, anterior at the top).

    from cggm_seg.apps.brats.preview import render_case_preview

    render_case_preview("data/phantom/BraTS2021_00000", "preview.png")
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from cggm_seg.apps.brats.layouts import LAYOUTS, MODALITIES, Layout

__all__ = ["CaseVolumes", "read_case", "render_case_preview"]

_NIFTI_EXTS = (".nii.gz", ".nii")
# Label values of each layout -> BraTS 2021 values (1 NCR, 2 ED, 4 ET).
_TO_BRATS2021 = {
    "brats2021": {1: 1, 2: 2, 4: 4},
    "brats2023": {1: 1, 2: 2, 3: 4},
    "msd": {1: 2, 2: 1, 3: 4},
}
_REGION_STYLE = ((1, "NCR", (0.95, 0.15, 0.15)), (2, "ED", (0.2, 0.85, 0.2)), (4, "ET", (1.0, 0.9, 0.1)))
_TITLES = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}


class CaseVolumes(NamedTuple):
    """One case read for display: arrays in RAS orientation.

    Attributes:
        case_id: the case's id (folder name, or MSD file name without extension).
        layout: the detected layout name.
        images: canonical sequence name -> float32 (X, Y, Z).
        label: uint8 (X, Y, Z) in BraTS 2021 values (0, 1 NCR, 2 ED, 4 ET), or None if absent.
    """

    case_id: str
    layout: str
    images: dict[str, np.ndarray]
    label: np.ndarray | None


def _strip_ext(name: str) -> str:
    for ext in _NIFTI_EXTS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _find(folder: Path, layout: Layout, suffix: str) -> Path | None:
    for path in sorted(folder.iterdir()):
        if _strip_ext(path.name).endswith(f"{layout.separator}{suffix}") and path.name.endswith(_NIFTI_EXTS):
            return path
    return None


def _load_ras(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.as_closest_canonical(nib.load(str(path))).dataobj)


def _to_brats2021(label: np.ndarray, layout: str) -> np.ndarray:
    out = np.zeros(label.shape, dtype=np.uint8)
    for src, dst in _TO_BRATS2021[layout].items():
        out[label == src] = dst
    return out


def _read_msd(image_path: Path) -> CaseVolumes:
    layout = LAYOUTS["msd"]
    data = _load_ras(image_path).astype(np.float32)
    if data.ndim != 4 or data.shape[-1] != len(layout.msd_channels):
        raise ValueError(
            f"{image_path}: expected a 4D MSD image with {len(layout.msd_channels)} channels "
            f"({', '.join(layout.msd_channels)}), got shape {data.shape}"
        )
    images = {m: data[..., layout.msd_channels.index(m)] for m in MODALITIES}
    label_path = image_path.parent.parent / "labelsTr" / image_path.name
    label = _to_brats2021(_load_ras(label_path), "msd") if label_path.is_file() else None
    return _checked(CaseVolumes(_strip_ext(image_path.name), "msd", images, label), image_path)


def _checked(case: CaseVolumes, where: Path) -> CaseVolumes:
    """``case``, once every volume is known to share one 3D shape."""
    shapes = {name: image.shape for name, image in case.images.items()}
    if case.label is not None:
        shapes["seg"] = case.label.shape
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 3:
        raise ValueError(f"{where}: expected 3D volumes of one shape, got {shapes}")
    return case


def read_case(path: str | Path) -> CaseVolumes:
    """Read one case for display, detecting its layout from the file names.

    Args:
        path: a BraTS 2021 or 2023 case folder (``<case>/<case>_flair.nii.gz`` ...), an MSD image
            (``imagesTr/BRATS_001.nii.gz``, label from ``../labelsTr``), or an MSD dataset root
            (its first training image is read).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: no layout's files are found in ``path``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"case path {path} does not exist")
    if path.is_file():
        return _read_msd(path)
    if (path / "imagesTr").is_dir():
        images = sorted(p for p in (path / "imagesTr").iterdir() if p.name.endswith(_NIFTI_EXTS))
        if not images:
            raise ValueError(f"{path / 'imagesTr'} holds no NIfTI images")
        return _read_msd(images[0])
    for layout in LAYOUTS.values():
        if layout.is_4d:
            continue
        files = {m: _find(path, layout, layout.suffixes[m]) for m in MODALITIES}
        if all(files.values()):
            images = {m: _load_ras(p).astype(np.float32) for m, p in files.items()}
            seg = _find(path, layout, layout.label_suffix)
            label = _to_brats2021(_load_ras(seg), layout.name) if seg is not None else None
            return _checked(CaseVolumes(path.name, layout.name, images, label), path)
    expected = "; ".join(
        f"{name}: <case>{lay.separator}{{{','.join(lay.suffixes[m] for m in MODALITIES)}}}.nii.gz"
        for name, lay in LAYOUTS.items()
        if not lay.is_4d
    )
    raise ValueError(f"{path}: no BraTS case files found (expected {expected}, or an MSD image)")


def _slices_through(label: np.ndarray | None, brain: np.ndarray, n_slices: int) -> list[int]:
    """Axial slice indices: the largest tumour-core slice and slices spread through the tumour
    above and below it (or through the brain when there is no tumour)."""
    has_tumour = label is not None and bool(label.any())
    target = label > 0 if has_tumour else brain
    z = np.nonzero(target.any(axis=(0, 1)))[0]
    if len(z) == 0:
        return [brain.shape[2] // 2]
    core = np.isin(label, (1, 4)) if has_tumour else target
    area = core.sum(axis=(0, 1)) if core.any() else target.sum(axis=(0, 1))
    centre = int(np.argmax(area))
    # Stay inside the tumour: spread over the middle 70 % of each side of the centre.
    low, high = centre - 0.7 * (centre - z[0]), centre + 0.7 * (z[-1] - centre)
    if n_slices == 1:
        return [centre]
    half = (n_slices - 1) / 2
    positions = [
        centre + (k - half) / half * ((centre - low) if k < half else (high - centre))
        for k in range(n_slices)
    ]
    return sorted({int(round(p)) for p in positions})


def _window(image: np.ndarray) -> tuple[float, float]:
    values = image[image > 0]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, [0.5, 99.8])
    return float(low), float(max(high, low + 1e-6))


def render_case_preview(case_path: str | Path, png_path: str | Path, n_slices: int = 3) -> Path:
    """Write an axial montage of one case to ``png_path``.

    Args:
        case_path: see :func:`read_case`.
        png_path: PNG file to write (parent folders are created).
        n_slices: number of rows (axial slices through the tumour), >= 1.

    Returns:
        ``png_path`` as a Path.

    Raises:
        ValueError: ``n_slices`` < 1, or the case cannot be read (see :func:`read_case`).
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    case = read_case(case_path)
    brain = np.any([case.images[m] > 0 for m in MODALITIES], axis=0)
    zs = _slices_through(case.label, brain, n_slices)
    # Crop every panel to the brain's in-plane bounding box.
    xs, ys = np.nonzero(brain.any(axis=2))
    crop = (slice(xs.min(), xs.max() + 1), slice(ys.min(), ys.max() + 1)) if xs.size else (slice(None),) * 2
    windows = {m: _window(case.images[m]) for m in MODALITIES}

    columns = [*MODALITIES, "label"]
    fig = Figure(figsize=(2.0 * len(columns), 2.3 * len(zs) + 0.8), dpi=100)
    axes = fig.subplots(len(zs), len(columns), squeeze=False)
    for row, z in enumerate(zs):
        for col, name in enumerate(columns):
            ax = axes[row, col]
            ax.set_axis_off()
            shown = "flair" if name == "label" else name
            low, high = windows[shown]
            # Transposed with origin="lower": x (left-right) across, y (posterior-anterior) up.
            ax.imshow(case.images[shown][crop + (z,)].T, cmap="gray", vmin=low, vmax=high, origin="lower")
            if name == "label" and case.label is not None:
                label = case.label[crop + (z,)].T
                overlay = np.zeros((*label.shape, 4))
                for value, _, colour in _REGION_STYLE:
                    overlay[label == value] = (*colour, 0.6)
                ax.imshow(overlay, origin="lower", interpolation="nearest")
            if row == 0:
                label_title = "label / FLAIR" if case.label is not None else "FLAIR (no label)"
                ax.set_title(label_title if name == "label" else _TITLES[name], fontsize=10)
            if col == 0:
                ax.text(0.02, 0.02, f"z={z}", color="w", fontsize=8, transform=ax.transAxes)
    handles = [Patch(color=colour, label=name) for _, name, colour in _REGION_STYLE]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, fontsize=9)
    fig.suptitle(f"{case.case_id} ({case.layout})", fontsize=11, y=1 - 0.08 / fig.get_figheight(), va="top")
    fig.subplots_adjust(
        left=0.01,
        right=0.99,
        top=1 - 0.6 / fig.get_figheight(),
        bottom=0.35 / fig.get_figheight(),
        wspace=0.03,
        hspace=0.05,
    )
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path)
    return png_path
