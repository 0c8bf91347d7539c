"""Case-level BraTS region metrics: Dice and HD95 per region (TC, WT, ET) on full 3D volumes.

Empty regions follow the BraTS challenge convention rather than returning NaN, so that a
mean over cases is always defined and a model is penalised for hallucinating a region that is
absent (common for ET in low-grade cases):

=====================  ==========  ==================================================
prediction / label      Dice        HD95
=====================  ==========  ==================================================
both empty              1.0         0.0
one of them empty       0.0         the volume's diagonal in mm (the largest possible)
both non-empty          usual       95th percentile of symmetric surface distances
=====================  ==========  ==================================================
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence

import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

from cggm_seg.apps.brats.layouts import REGIONS

__all__ = ["region_metrics", "summarise_cases"]


def _volume_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def region_metrics(
    pred: torch.Tensor,
    label: torch.Tensor,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    regions: Sequence[str] = REGIONS,
    hd95: bool = True,
) -> dict[str, float]:
    """Dice and HD95 per region for ONE case.

    Args:
        pred: binary prediction, ``C x D x H x W`` (C region channels, any dtype; > 0.5 is inside).
        label: binary reference of the same shape.
        spacing: voxel size in mm along the three spatial axes (HD95 is in mm).
        regions: names of the C channels, used as keys (default TC, WT, ET).
        hd95: also compute HD95 (the slower of the two).

    Returns:
        ``{"dice_tc", "dice_wt", "dice_et", "dice_mean", "hd95_tc", "hd95_wt", "hd95_et", "hd95_mean"}``
        mapped to floats (HD95 keys only with ``hd95=True``).

    Raises:
        ValueError: shapes differ or the channel count does not match ``regions``.
    """
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(label.shape)}")
    if pred.ndim != 4 or pred.shape[0] != len(regions):
        raise ValueError(
            f"expected C x D x H x W with C = {len(regions)} channels {tuple(regions)}, "
            f"got {tuple(pred.shape)}"
        )
    p = (pred > 0.5).float().unsqueeze(0).cpu()
    y = (label > 0.5).float().unsqueeze(0).cpu()
    out: dict[str, float] = {}
    dice = compute_dice(p, y, include_background=True, ignore_empty=False)[0]
    for c, name in enumerate(regions):
        out[f"dice_{name}"] = float(dice[c])
    out["dice_mean"] = float(sum(out[f"dice_{r}"] for r in regions) / len(regions))
    if hd95:
        worst = _volume_diagonal_mm(p.shape[2:], spacing)
        for c, name in enumerate(regions):
            p_empty, y_empty = not bool(p[0, c].any()), not bool(y[0, c].any())
            if p_empty and y_empty:
                value = 0.0
            elif p_empty or y_empty:
                value = worst
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    value = float(
                        compute_hausdorff_distance(
                            p[:, c : c + 1], y[:, c : c + 1], percentile=95, spacing=list(spacing)
                        )[0, 0]
                    )
            out[f"hd95_{name}"] = value
        out["hd95_mean"] = float(sum(out[f"hd95_{r}"] for r in regions) / len(regions))
    return out


def summarise_cases(per_case: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, standard deviation and median over cases of every numeric key.

    Returns:
        ``{key: {"mean": ..., "std": ..., "median": ..., "n": ...}}``; keys that are not numbers
        in every case (e.g. ``case_id``) are skipped.
    """
    if not per_case:
        raise ValueError("no cases to summarise")
    keys = [k for k, v in per_case[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    summary: dict[str, dict[str, float]] = {}
    for key in keys:
        values = [float(case[key]) for case in per_case]
        summary[key] = {
            "mean": statistics.fmean(values),
            "std": statistics.pstdev(values),
            "median": statistics.median(values),
            "n": len(values),
        }
    return summary
