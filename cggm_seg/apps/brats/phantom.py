"""Synthetic BraTS-like cases: a physics-based phantom on real anatomy.

No package ships BraTS cases and nothing can be downloaded at run time, so the toolkit's embedded
dataset is generated from the MNI ICBM152 2009 tissue maps that ship inside nilearn:

1. grey matter, white matter and CSF fractions (CSF = brain mask - GM - WM) are resampled to the
   requested spacing through a small random affine and a left-right flip (anatomical variety);
2. a tumour is grown around a point in white matter: a necrotic core (radius 3-15 mm), an
   enhancing rim (2-6 mm) and oedema 8-30 mm beyond it that follows white matter and stays out
   of CSF; every boundary is perturbed by smoothed noise and has a soft, partial-volume fraction
   from which the hard labels are thresholded (so NCR is inside TC and TC inside WT);
3. each voxel's signal is the partial-volume mix of :data:`CONTRAST_TABLE` (3 T signal relative
   to white matter, CSF nulled on FLAIR), with per-case jitter of the table, texture, a gamma,
   a smooth bias field (made at low resolution and upsampled) and Rician noise of 1-5 % of WM.

Each tumour region is seen by one or two sequences (ET by T1ce, ED by FLAIR/T2, NCR by T1ce/T2),
which is the modality structure that makes balanced multimodal learning matter; the per-sequence
``noise`` and ``contrast`` knobs of :class:`PhantomConfig` make one sequence dominant or blind.

Typical use::

    from cggm_seg.apps.brats.phantom import PhantomConfig, write_phantom_dataset

    write_phantom_dataset("data/phantom", cases=20, seed=0, config=PhantomConfig(contrast={"t1ce": 0.5}))

or ``cggm-seg phantom --out data/phantom --cases 20 --seed 0 --contrast t1ce=0.5``.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi

from cggm_seg.apps.brats.layouts import MODALITIES, Layout, get_layout

__all__ = [
    "CONTRAST_TABLE",
    "PhantomConfig",
    "PhantomCase",
    "make_phantom_case",
    "phantom_anatomy",
    "phantom_case_ids",
    "write_phantom_case",
    "write_phantom_dataset",
]

#: Signal of each tissue relative to white matter at 3 T, per sequence (CSF is nulled on FLAIR).
CONTRAST_TABLE: dict[str, dict[str, float]] = {
    "csf": {"t1": 0.41, "t1ce": 0.41, "t2": 3.26, "flair": 0.05},
    "gm": {"t1": 0.85, "t1ce": 0.85, "t2": 1.60, "flair": 1.34},
    "wm": {"t1": 1.00, "t1ce": 1.00, "t2": 1.00, "flair": 1.00},
    "ed": {"t1": 0.91, "t1ce": 0.98, "t2": 1.91, "flair": 1.74},
    "et": {"t1": 0.79, "t1ce": 1.67, "t2": 1.79, "flair": 1.33},
    "ncr": {"t1": 0.63, "t1ce": 0.63, "t2": 2.98, "flair": 1.32},
}

_TISSUES = ("gm", "wm", "csf")
_TUMOUR = ("ncr", "et", "ed")

# Anatomical variety: rotation (degrees, per axis), scale (relative, per axis), shift (mm, per axis).
_MAX_ROTATION_DEG = 8.0
_MAX_SCALE = 0.08
_MAX_SHIFT_MM = 5.0
# Size of the low-resolution cells of the smooth random fields (mm).
_BIAS_CELL_MM = 60.0
_SHAPE_CELLS_MM = (8.0, 8.0, 14.0)  # core lobes, rim thickness, oedema reach
# Texture: relative amplitude of the correlated texture in healthy tissue and extra in tumour.
_TEXTURE_TISSUE = 0.03
_TEXTURE_TUMOUR = 0.05


@dataclass
class PhantomConfig:
    """Settings of the phantom generator (every field a plain value a JSON config can give).

    Args:
        spacing: isotropic voxel size of the generated images in mm (default 2.0). 1 and 2 use
            the shipped templates directly; other values resample them.
        noise: sequence -> multiplier of that sequence's Rician noise (default 1.0 each; 0 = none).
            Keys are canonical names from :data:`~cggm_seg.apps.brats.layouts.MODALITIES`.
        contrast: sequence -> multiplier of the tumour-vs-tissue contrast in that sequence
            (default 1.0 each; 0 makes the tumour invisible there, 2 doubles its contrast).
        necrosis_radius_mm: range of the necrotic core radius.
        rim_thickness_mm: range of the enhancing rim thickness.
        oedema_extent_mm: range of how far oedema reaches beyond the enhancing rim (along white
            matter; about a third of that into grey matter).
        noise_level: range of the Rician noise standard deviation as a fraction of white matter.
        bias: maximum relative deviation of the smooth bias field (0.1 = x0.9 to x1.1).
        intensity_jitter: standard deviation of the per-case relative jitter of each entry of
            :data:`CONTRAST_TABLE` (white matter stays the reference).
        gamma: range of the per-case, per-sequence gamma applied to the WM-relative signal.
        wm_intensity: range of the white-matter intensity of each sequence in the written files
            (arbitrary scanner units, like real data; normalise before training).
        vary_anatomy: apply a random left-right flip and small affine to the template anatomy.

    Raises:
        ValueError: a knob names an unknown sequence or has a negative or non-finite value, a
            range is empty or not positive, or the spacing is outside 0.5-8 mm.
    """

    spacing: float = 2.0
    noise: dict[str, float] = field(default_factory=dict)
    contrast: dict[str, float] = field(default_factory=dict)
    necrosis_radius_mm: tuple[float, float] = (3.0, 15.0)
    rim_thickness_mm: tuple[float, float] = (2.0, 6.0)
    oedema_extent_mm: tuple[float, float] = (8.0, 30.0)
    noise_level: tuple[float, float] = (0.01, 0.05)
    bias: float = 0.1
    intensity_jitter: float = 0.03
    gamma: tuple[float, float] = (0.9, 1.1)
    wm_intensity: tuple[float, float] = (400.0, 1200.0)
    vary_anatomy: bool = True

    def __post_init__(self) -> None:
        if not (_is_number(self.spacing) and 0.5 <= self.spacing <= 8.0):
            raise ValueError(f"spacing must be a number of mm between 0.5 and 8, got {self.spacing!r}")
        self.spacing = float(self.spacing)
        for knob in ("noise", "contrast"):
            values = getattr(self, knob)
            if not isinstance(values, Mapping):
                raise ValueError(f"{knob} must map sequence names to numbers, got {values!r}")
            unknown = sorted(set(values) - set(MODALITIES))
            if unknown:
                raise ValueError(
                    f"{knob} names unknown sequence(s) {unknown}; expected some of {list(MODALITIES)}"
                )
            for name, value in values.items():
                if not (_is_number(value) and math.isfinite(value) and value >= 0):
                    raise ValueError(f"{knob}[{name!r}] must be a finite number >= 0, got {value!r}")
            setattr(self, knob, {name: float(value) for name, value in values.items()})
        for name in ("necrosis_radius_mm", "rim_thickness_mm", "oedema_extent_mm", "noise_level"):
            setattr(self, name, _check_range(name, getattr(self, name)))
        for name in ("gamma", "wm_intensity"):
            setattr(self, name, _check_range(name, getattr(self, name), positive=True))
        if not 0.0 <= self.bias < 1.0:
            raise ValueError(f"bias must be in [0, 1), got {self.bias!r}")
        if not 0.0 <= self.intensity_jitter < 0.2:
            raise ValueError(f"intensity_jitter must be in [0, 0.2), got {self.intensity_jitter!r}")

    def noise_of(self, modality: str) -> float:
        """Noise multiplier of ``modality`` (1.0 unless set)."""
        return self.noise.get(modality, 1.0)

    def contrast_of(self, modality: str) -> float:
        """Tumour contrast multiplier of ``modality`` (1.0 unless set)."""
        return self.contrast.get(modality, 1.0)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_range(name: str, value: Sequence[float], positive: bool = False) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair of numbers, got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high) or (positive and low == 0):
        bound = "0 < low" if positive else "0 <= low"
        raise ValueError(f"{name} must be a (low, high) range with {bound} <= high, got {value!r}")
    return low, high


class PhantomCase(NamedTuple):
    """One generated case.

    Attributes:
        images: sequence name (:data:`MODALITIES`) -> float32 array of shape (X, Y, Z).
        label: uint8 array (X, Y, Z) in BraTS 2021 values: 0, 1 NCR, 2 ED, 4 ET.
        affine: 4x4 voxel-to-world (RAS, mm) matrix shared by the images and the label.
    """

    images: dict[str, np.ndarray]
    label: np.ndarray
    affine: np.ndarray


# ----------------------------------------------------------------------------------------------
# Anatomy


@functools.lru_cache(maxsize=2)
def _mni_tissues(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """GM, WM, CSF fractions (3, X, Y, Z) float32 of the MNI152 2009 template, and its affine.

    Cached per process: loading the four nilearn images takes seconds.
    """
    from nilearn import datasets

    gm_img = datasets.load_mni152_gm_template(resolution=resolution)
    gm = np.clip(np.asarray(gm_img.dataobj, dtype=np.float32), 0.0, 1.0)
    wm = np.clip(np.asarray(datasets.load_mni152_wm_template(resolution=resolution).dataobj), 0.0, 1.0)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=resolution).dataobj) > 0
    gm, wm = gm * mask, wm.astype(np.float32) * mask
    total = gm + wm
    over = total > 1.0
    gm[over] /= total[over]
    wm[over] /= total[over]
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    return np.stack([gm, wm, csf]).astype(np.float32), np.asarray(gm_img.affine, dtype=np.float64)


@functools.lru_cache(maxsize=2)
def _mni_tissues_for(resolution: int, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_mni_tissues`, smoothed first when the output grid is coarser (anti-aliasing, so
    that resampled fractions stay partial-volume averages)."""
    tissues, affine = _mni_tissues(resolution)
    ratio = spacing / resolution
    if ratio <= 1.25:
        return tissues, affine
    # A Gaussian of the output voxel's width minus the template's own (sigma ~ FWHM / 2.355).
    sigma = math.sqrt(ratio**2 - 1.0) / 2.355
    return ndi.gaussian_filter(tissues, sigma=(0, sigma, sigma, sigma)), affine


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    """3x3 rotation about x, then y, then z by the given angles."""
    cx, cy, cz = np.cos(angles_rad)
    sx, sy, sz = np.sin(angles_rad)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _anatomy(rng: np.random.Generator, config: PhantomConfig) -> tuple[np.ndarray, np.ndarray]:
    """Tissue fractions (3, X, Y, Z) on the output grid, and the output affine.

    The template is resampled once, through the random flip/affine when ``vary_anatomy`` is on.
    """
    resolution = 1 if config.spacing < 2.0 else 2
    tissues, template_affine = _mni_tissues_for(resolution, config.spacing)
    fov = (np.array(tissues.shape[1:]) - 1) * resolution
    out_shape = tuple(int(n) for n in np.floor(fov / config.spacing + 1e-6).astype(int) + 1)
    out_affine = template_affine.copy()
    out_affine[:3, :3] = np.diag([config.spacing] * 3)

    # World transform T applied to the anatomy: p -> R S F (p - c) + c + t, about the brain centre.
    flip = np.diag([-1.0 if rng.random() < 0.5 else 1.0, 1.0, 1.0])
    angles = np.deg2rad(rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG, 3))
    scale = np.diag(1.0 + rng.uniform(-_MAX_SCALE, _MAX_SCALE, 3))
    shift = rng.uniform(-_MAX_SHIFT_MM, _MAX_SHIFT_MM, 3)
    if not config.vary_anatomy:
        flip, angles, scale, shift = np.eye(3), np.zeros(3), np.eye(3), np.zeros(3)
    linear = _rotation(angles) @ scale @ flip
    centre = np.array([0.0, -18.0, 18.0])  # MNI mid-sagittal plane, middle of the cerebrum
    # Output voxel o -> world A_o o -> anatomy source point T^-1(A_o o) -> template voxel.
    inv_linear = np.linalg.inv(linear)
    world_to_template = np.linalg.inv(template_affine)
    matrix = world_to_template[:3, :3] @ inv_linear @ out_affine[:3, :3]
    offset = (
        world_to_template[:3, :3] @ (inv_linear @ (out_affine[:3, 3] - centre - shift) + centre)
        + world_to_template[:3, 3]
    )
    out = np.empty((3, *out_shape), dtype=np.float32)
    for k in range(3):
        ndi.affine_transform(tissues[k], matrix, offset, output_shape=out_shape, output=out[k], order=1)
    np.clip(out, 0.0, 1.0, out=out)
    return out, out_affine


def phantom_anatomy(
    rng: np.random.Generator | int, config: PhantomConfig | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The healthy anatomy that :func:`make_phantom_case` builds the case of the same seed on.

    Args:
        rng: a numpy Generator (in the state it would be handed to :func:`make_phantom_case`)
            or an int seed.
        config: generator settings; ``PhantomConfig()`` when None.

    Returns:
        ``(tissues, affine)``: ``tissues`` maps ``gm``, ``wm``, ``csf`` to float32 (X, Y, Z)
        fractions in [0, 1] (their sum is the brain fraction of a voxel), ``affine`` the case's 4x4.
    """
    config = config or PhantomConfig()
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    tissues, affine = _anatomy(rng, config)
    return dict(zip(_TISSUES, tissues)), affine


# ----------------------------------------------------------------------------------------------
# Smooth random fields


@functools.lru_cache(maxsize=64)
def _spline_weights(n_low: int, n_high: int) -> np.ndarray:
    """(n_high, n_low) matrix that upsamples n_low samples to n_high by cubic-spline interpolation."""
    return ndi.zoom(np.eye(n_low), (n_high / n_low, 1.0), order=3, mode="mirror")


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], cell_voxels: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field of ``shape``: noise on a coarse grid, upsampled.

    Separable spline upsampling of a few hundred coarse samples is far cheaper than filtering a
    full-resolution volume.
    """
    low_shape = tuple(max(3, int(math.ceil(n / cell_voxels)) + 1) for n in shape)
    low = rng.standard_normal(low_shape)
    weights = [_spline_weights(lo, hi) for lo, hi in zip(low_shape, shape)]
    out = np.einsum("ia,jb,kc,abc->ijk", *weights, low, optimize=True)
    out -= out.mean()
    out /= max(float(out.std()), 1e-6)
    return out.astype(np.float32)


def _ramp(distance_inside_mm: np.ndarray, spacing: float) -> np.ndarray:
    """Partial-volume fraction of a voxel whose centre lies ``distance`` mm inside a boundary."""
    return np.clip(0.5 + distance_inside_mm / spacing, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Tumour


def _component_at(mask: np.ndarray, index: tuple[int, ...]) -> np.ndarray:
    """The connected component of ``mask`` that holds ``index``, grown by one voxel (its soft edge)."""
    if not mask[index]:
        return np.zeros_like(mask)
    components, _ = ndi.label(mask)
    return ndi.binary_dilation(components == components[index])


def _tumour_centre(rng: np.random.Generator, tissues: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Voxel index of a tumour centre: deep white matter of the cerebrum (not cerebellum/stem)."""
    wm = tissues[1]
    candidates = np.flatnonzero(wm > 0.9)
    idx = np.stack(np.unravel_index(candidates, wm.shape), axis=1)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    supratentorial = world[:, 2] > -10.0
    if supratentorial.any():
        idx = idx[supratentorial]
    return idx[rng.integers(len(idx))]


def _tumour_fractions(
    rng: np.random.Generator, tissues: np.ndarray, affine: np.ndarray, config: PhantomConfig
) -> tuple[tuple[slice, ...], np.ndarray]:
    """Soft fractions of NCR, ET, ED (3, ...) in a box around the tumour, and the box.

    Fractions are cumulative-consistent: ncr <= tc (= ncr + et) <= wt (= tc + ed) <= brain.
    """
    s = config.spacing
    r_core = rng.uniform(*config.necrosis_radius_mm)
    rim = rng.uniform(*config.rim_thickness_mm)
    extent = rng.uniform(*config.oedema_extent_mm)
    centre = _tumour_centre(rng, tissues, affine)
    # Random ellipsoid: axes scaled 0.8-1.25 (volume kept), randomly oriented.
    axes = np.exp(rng.uniform(np.log(0.8), np.log(1.25), 3))
    axes /= np.prod(axes) ** (1 / 3)
    orientation = _rotation(rng.uniform(-np.pi, np.pi, 3))

    reach = (r_core + rim) * 1.8 + extent * 1.4 + 2 * s
    half = int(math.ceil(reach / s))
    box = tuple(slice(max(0, c - half), min(n, c + half + 1)) for c, n in zip(centre, tissues.shape[1:]))
    box_shape = tuple(b.stop - b.start for b in box)
    grids = np.meshgrid(
        *[(np.arange(b.start, b.stop) - c) * s for b, c in zip(box, centre)], indexing="ij", sparse=True
    )
    shape_matrix = np.diag(1.0 / axes) @ orientation.T
    r = np.sqrt(sum((sum(shape_matrix[i, j] * grids[j] for j in range(3))) ** 2 for i in range(3)))
    r = np.broadcast_to(r, box_shape)

    lobes, rim_noise, oedema_noise = (
        np.clip(_smooth_field(rng, box_shape, cell_mm / s), -2.5, 2.5) for cell_mm in _SHAPE_CELLS_MM
    )
    rho = r * (1.0 + 0.2 * lobes)  # a multiplicative perturbation keeps the centre inside the core

    gm, wm, csf = (t[box] for t in tissues)
    brain = gm + wm + csf
    # Oedema spreads along white matter, about a third as far into grey matter.
    wm_share = ndi.gaussian_filter(wm, sigma=4.0 / s)
    tc_radius = r_core + np.clip(rim * (1.0 + 0.5 * rim_noise), 0.0, None)
    wt_radius = tc_radius + extent * (0.35 + 0.65 * wm_share) * (1.0 + 0.3 * oedema_noise)

    tc = _ramp(tc_radius - rho, s) * brain
    wt = np.maximum(_ramp(wt_radius - rho, s) * (gm + wm), tc)  # parenchyma only: no oedema in CSF
    # One tumour: drop islands that the noisy boundaries cut off from the part around the centre.
    centre_in_box = tuple(int(c - b.start) for c, b in zip(centre, box))
    tc = np.where(_component_at(tc >= 0.5, centre_in_box), tc, 0.0)
    wt = np.where(_component_at(wt >= 0.5, centre_in_box), wt, tc)
    ncr = np.minimum(_ramp(r_core - rho, s) * brain, tc)
    return box, np.stack([ncr, tc - ncr, wt - tc]).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Signal


def make_phantom_case(rng: np.random.Generator | int, config: PhantomConfig | None = None) -> PhantomCase:
    """Generate one synthetic BraTS-like case.

    Args:
        rng: a numpy Generator, or an int seed. The same seed and config give byte-identical
            arrays; changing one sequence's ``noise`` or ``contrast`` changes only that sequence.
        config: generator settings; ``PhantomConfig()`` when None.

    Returns:
        :class:`PhantomCase` ``(images, label, affine)``: ``images[m]`` float32 (X, Y, Z) for each
        m in :data:`MODALITIES` (zero outside the brain, like skull-stripped data), ``label`` uint8
        (X, Y, Z) in BraTS 2021 values (0, 1 NCR, 2 ED, 4 ET), ``affine`` 4x4 float64. At the
        default 2 mm, X, Y, Z = 99, 117, 95.
    """
    config = config or PhantomConfig()
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    tissues, affine = _anatomy(rng, config)  # first draw: phantom_anatomy() relies on it
    box, tumour = _tumour_fractions(rng, tissues, affine, config)
    shape = tissues.shape[1:]

    brain = tissues.sum(axis=0)
    skull_stripped = brain > 0.5
    tumour_total = tumour.sum(axis=0)

    # Hard labels from the soft fractions: the cumulative thresholds nest NCR in TC in WT.
    ncr_f, et_f, _ = tumour
    box_label = np.zeros(tumour_total.shape, dtype=np.uint8)
    box_label[tumour_total >= 0.5] = 2
    box_label[ncr_f + et_f >= 0.5] = 4
    box_label[ncr_f >= 0.5] = 1
    label = np.zeros(shape, dtype=np.uint8)
    label[box] = box_label
    label[~skull_stripped] = 0

    texture = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma=0.8)
    texture /= max(float(texture.std()), 1e-6)
    np.clip(texture, -2.5, 2.5, out=texture)  # Gaussian tails would make isolated bright blobs
    n_brain = int(skull_stripped.sum())
    images = {}
    for modality in MODALITIES:
        jitter = np.exp(rng.normal(0.0, config.intensity_jitter, len(CONTRAST_TABLE)))
        table = {
            name: values[modality] * (1.0 if name == "wm" else float(j))
            for (name, values), j in zip(CONTRAST_TABLE.items(), jitter)
        }
        gamma = rng.uniform(*config.gamma)
        bias = _smooth_field(rng, shape, _BIAS_CELL_MM / config.spacing)
        bias_scale = config.bias / max(float(np.abs(bias).max()), 1e-6)
        wm_level = rng.uniform(*config.wm_intensity)
        sigma = rng.uniform(*config.noise_level) * wm_level * config.noise_of(modality)
        real_noise = rng.standard_normal(n_brain, dtype=np.float32)
        imag_noise = rng.standard_normal(n_brain, dtype=np.float32)

        tissue_signal = sum(table[t] * tissues[k] for k, t in enumerate(_TISSUES))
        signal = tissue_signal * (1.0 + _TEXTURE_TISSUE * texture)
        # Partial-volume mix in the tumour box: tumour compartments replace the local tissue mix
        # (its signal per unit of brain), scaled by the contrast knob so 0 leaves the healthy image.
        c = config.contrast_of(modality)
        local = tissue_signal[box]
        tissue_mix = local / np.maximum(brain[box], 1e-3)
        mixed = local + c * sum(tumour[k] * (table[t] - tissue_mix) for k, t in enumerate(_TUMOUR))
        signal[box] = mixed * (1.0 + (_TEXTURE_TISSUE + c * _TEXTURE_TUMOUR * tumour_total) * texture[box])
        np.clip(signal, 0.0, None, out=signal)
        signal **= gamma
        signal *= 1.0 + bias_scale * bias
        signal *= wm_level

        # Rician magnitude noise inside the brain; zero outside (skull-stripped, like BraTS).
        image = np.zeros(shape, dtype=np.float32)
        image[skull_stripped] = np.hypot(signal[skull_stripped] + sigma * real_noise, sigma * imag_noise)
        images[modality] = image
    return PhantomCase(images=images, label=label, affine=affine)


# ----------------------------------------------------------------------------------------------
# Writing datasets

_DATASET_ID_FORMAT = {
    "brats2021": "BraTS2021_{:05d}",
    "brats2023": "BraTS-GLI-{:05d}-000",
    "msd": "BRATS_{:03d}",
}

# BraTS 2021 label values (0, 1 NCR, 2 ED, 4 ET) -> the values each layout stores.
_LABEL_MAPS = {
    "brats2021": {0: 0, 1: 1, 2: 2, 4: 4},
    "brats2023": {0: 0, 1: 1, 2: 2, 4: 3},
    "msd": {0: 0, 1: 2, 2: 1, 4: 3},
}

_MSD_MODALITY_NAMES = {"flair": "FLAIR", "t1": "T1w", "t1ce": "t1gd", "t2": "T2w"}


def phantom_case_ids(cases: int, layout: str | Layout = "brats2021") -> list[str]:
    """Case ids of a phantom dataset of ``cases`` cases, named as real data of ``layout`` is."""
    name = get_layout(layout).name
    return [_DATASET_ID_FORMAT[name].format(i) for i in range(cases)]


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    image = nib.Nifti1Image(array, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))


def _relabel(label: np.ndarray, layout: str) -> np.ndarray:
    lut = np.zeros(5, dtype=np.uint8)
    for src, dst in _LABEL_MAPS[layout].items():
        lut[src] = dst
    return lut[label]


def write_phantom_case(
    out_dir: str | Path, case_id: str, case: PhantomCase, layout: str | Layout = "brats2021"
) -> list[Path]:
    """Write one case under the dataset root ``out_dir`` as ``layout`` names and labels it.

    Returns:
        The files written (images first, label last).
    """
    out_dir, layout = Path(out_dir), get_layout(layout)
    label = _relabel(case.label, layout.name)
    if layout.is_4d:
        image_path = out_dir / "imagesTr" / f"{case_id}.nii.gz"
        label_path = out_dir / "labelsTr" / f"{case_id}.nii.gz"
        _save_nifti(np.stack([case.images[m] for m in layout.msd_channels], axis=-1), case.affine, image_path)
        _save_nifti(label, case.affine, label_path)
        return [image_path, label_path]
    paths = [out_dir / case_id / layout.file_name(case_id, m) for m in (*MODALITIES, "seg")]
    for modality, path in zip(MODALITIES, paths):
        _save_nifti(case.images[modality], case.affine, path)
    _save_nifti(label, case.affine, paths[-1])
    return paths


def _msd_dataset_json(case_ids: Sequence[str], layout: Layout) -> dict:
    """dataset.json in the form of the Medical Segmentation Decathlon's Task01_BrainTumour."""
    return {
        "name": "BRATS",
        "description": "Synthetic gliomas (cggm_seg physics-based phantom on the MNI152 anatomy)",
        "reference": "cggm_seg.apps.brats.phantom",
        "licence": "CC-BY-SA 4.0",
        "release": "cggm_seg phantom",
        "tensorImageSize": "4D",
        "modality": {str(i): _MSD_MODALITY_NAMES[m] for i, m in enumerate(layout.msd_channels)},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": len(case_ids),
        "numTest": 0,
        "training": [
            {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in case_ids
        ],
        "test": [],
    }


def write_phantom_dataset(
    out_dir: str | Path,
    cases: int,
    seed: int = 0,
    layout: str | Layout = "brats2021",
    config: PhantomConfig | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> list[str]:
    """Generate ``cases`` phantom cases and write them to ``out_dir`` exactly as real data is laid out.

    Case ``i`` is generated from ``numpy.random.default_rng([seed, i])``, so a case does not
    depend on how many others are written. Images are float32 NIfTI, labels uint8 NIfTI in the
    layout's label values (BraTS 2023: ET = 3; MSD: 1 oedema, 2 non-enhancing, 3 enhancing, with
    the 4D image channels-last in FLAIR, T1w, T1gd, T2w order and a ``dataset.json``). A
    ``phantom.json`` beside the cases records seed, layout and config.

    Args:
        out_dir: dataset root; created if missing.
        cases: number of cases (>= 1).
        seed: dataset seed.
        layout: ``brats2021`` (default), ``brats2023`` or ``msd``.
        config: generator settings; ``PhantomConfig()`` when None.
        progress: show a tqdm progress bar over cases.
        overwrite: write into a non-empty ``out_dir`` (files of the same name are replaced,
            other files are left in place).

    Returns:
        The case ids written, in order (``BraTS2021_00000``, ``BraTS-GLI-00000-000``, ``BRATS_000``).

    Raises:
        ValueError: ``cases`` < 1, a negative ``seed``, or an unknown layout.
        FileExistsError: ``out_dir`` exists and is not empty, and ``overwrite`` is False.
    """
    from tqdm.auto import tqdm

    if isinstance(cases, bool) or not isinstance(cases, (int, np.integer)) or cases < 1:
        raise ValueError(f"cases must be an integer >= 1, got {cases!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    layout = get_layout(layout)
    config = config or PhantomConfig()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"output path {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"output folder {out_dir} is not empty; choose an empty or new folder, or pass "
            "overwrite=True (--overwrite) to write into it (same-named files are replaced)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)

    case_ids = phantom_case_ids(int(cases), layout)
    for i, case_id in enumerate(tqdm(case_ids, desc="phantom", unit="case", disable=not progress)):
        case = make_phantom_case(np.random.default_rng([seed, i]), config)
        write_phantom_case(out_dir, case_id, case, layout)
    if layout.is_4d:
        (out_dir / "dataset.json").write_text(json.dumps(_msd_dataset_json(case_ids, layout), indent=4))
    provenance = {
        "generator": "cggm_seg.apps.brats.phantom",
        "seed": seed,
        "cases": len(case_ids),
        "layout": layout.name,
        "config": asdict(config),
    }
    (out_dir / "phantom.json").write_text(json.dumps(provenance, indent=2))
    return case_ids
