"""Metrics of the classification and regression tasks, and their main figure for the audit.

Four families, chosen by :attr:`cggm_seg.apps.brats.ViewData.metrics`:

- ``classification``: accuracy, macro F1 and weighted F1;
- ``regression``: MAE, RMSE (in the target's units), R^2 and Pearson's r;
- ``mosi`` (CMU-MOSI sentiment in [-3, 3], the conventions of the MulT / Self-MM evaluation code):
  MAE; Pearson's ``corr``; ``acc2_has0`` / ``f1_has0``: non-negative vs negative over all samples;
  ``acc2_non0`` / ``f1_non0``: positive vs negative over the samples whose true score is not 0
  (F1 weighted by class support, as there); ``acc7``: the scores clipped to [-3, 3] and rounded to
  the seven integers, predictions likewise;
- ``iemocap``: accuracy, weighted F1 and macro F1.

:data:`MAIN_METRIC` names each family's headline figure, the one the missing-view audit
computes on every subset and the Shapley values share out: accuracy for the classification
families, R^2 for the regression ones (an input with every view missing predicts roughly the
training mean, R^2 near 0, so the values share out what the views add to that).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "METRIC_FAMILIES",
    "MAIN_METRIC",
    "classification_metrics",
    "regression_metrics",
    "mosi_metrics",
    "task_metrics",
]

METRIC_FAMILIES: tuple[str, ...] = ("classification", "regression", "mosi", "iemocap")
#: family -> the metric the audit and the validation selection use (higher is better)
MAIN_METRIC: dict[str, str] = {
    "classification": "accuracy",
    "iemocap": "accuracy",
    "regression": "r2",
    "mosi": "r2",
}


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _f1(truth: np.ndarray, pred: np.ndarray, average: str) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(truth, pred, average=average, zero_division=0))


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``accuracy``, ``f1_macro``, ``f1_weighted`` of ``B x C`` logits against ``B`` class indices."""
    if logits.dim() != 2 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"expected logits B x C and B labels, got shapes {list(logits.shape)} and {list(labels.shape)}."
        )
    pred = logits.argmax(dim=1).cpu().numpy()
    truth = labels.reshape(-1).long().cpu().numpy()
    return {
        "accuracy": float((pred == truth).mean()),
        "f1_macro": _f1(truth, pred, "macro"),
        "f1_weighted": _f1(truth, pred, "weighted"),
    }


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else math.nan


def _flat_pair(pred: torch.Tensor, target: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    p, t = _numpy(pred).reshape(-1), _numpy(target).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"expected one prediction per target, got {p.size} and {t.size}.")
    if p.size == 0:
        raise ValueError("no samples to evaluate.")
    return p, t


def regression_metrics(
    pred: torch.Tensor, target: torch.Tensor, scale: float = 1.0, offset: float = 0.0
) -> dict[str, float]:
    """``mae``, ``rmse`` (after ``x * scale + offset``: back in the target's units), ``r2``, ``pearson_r``.

    R^2 = 1 - SS_res / SS_tot (SS_tot about the mean of ``target``); NaN when the targets are constant.
    """
    p, t = _flat_pair(pred, target)
    p, t = p * scale + offset, t * scale + offset
    residual = float(((t - p) ** 2).sum())
    total = float(((t - t.mean()) ** 2).sum())
    return {
        "mae": float(np.abs(p - t).mean()),
        "rmse": math.sqrt(residual / p.size),
        "r2": 1.0 - residual / total if total > 0 else math.nan,
        "pearson_r": _pearson(p, t),
    }


def mosi_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """CMU-MOSI's metrics of sentiment predictions against scores in [-3, 3] (module docstring)."""
    p, t = _flat_pair(pred, target)
    out = {"mae": float(np.abs(p - t).mean()), "corr": _pearson(p, t)}
    out["acc2_has0"] = float(((p >= 0) == (t >= 0)).mean())
    out["f1_has0"] = _f1(t >= 0, p >= 0, "weighted")
    non0 = t != 0
    if non0.any():
        out["acc2_non0"] = float(((p[non0] > 0) == (t[non0] > 0)).mean())
        out["f1_non0"] = _f1(t[non0] > 0, p[non0] > 0, "weighted")
    else:
        out["acc2_non0"] = out["f1_non0"] = math.nan
    out["acc7"] = float((np.round(np.clip(p, -3, 3)) == np.round(np.clip(t, -3, 3))).mean())
    total = float(((t - t.mean()) ** 2).sum())
    out["r2"] = 1.0 - float(((t - p) ** 2).sum()) / total if total > 0 else math.nan
    return out


def task_metrics(
    family: str, output: torch.Tensor, target: torch.Tensor, scale: float = 1.0, offset: float = 0.0
) -> dict[str, float]:
    """The metrics of ``family`` (one of :data:`METRIC_FAMILIES`) for a network's output.

    Args:
        family: ``classification``, ``regression``, ``mosi`` or ``iemocap``.
        output: ``B x C`` logits (classification families) or ``B x 1`` predictions.
        target: ``B`` class indices, or ``B x 1`` targets.
        scale, offset: regression: map standardised values back to the target's units.

    Raises:
        ValueError: an unknown family, or shapes that do not match.
    """
    if family in ("classification", "iemocap"):
        return classification_metrics(output, target)
    if family == "regression":
        return regression_metrics(output, target, scale, offset)
    if family == "mosi":
        return mosi_metrics(output, target)
    raise ValueError(f"unknown metric family {family!r}; available: {list(METRIC_FAMILIES)}.")
