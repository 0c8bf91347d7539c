"""The structure every multi-view dataset is loaded into, and the training-split standardisation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from cggm_seg.networks.multi_view import ENCODERS

__all__ = ["SPLITS", "ViewData", "standardise", "stratified_split"]

#: the splits of a :class:`ViewData`, in order
SPLITS: tuple[str, ...] = ("training", "validation", "test")
_SPLITS = SPLITS


@dataclass
class ViewData:
    """A multi-view dataset split three ways, ready for :class:`~cggm_seg.networks.MultiViewNet`.

    Attributes:
        name: the dataset.
        task: ``"classification"`` or ``"regression"``.
        metrics: the metric family of the test report: ``"classification"``, ``"regression"``,
            ``"mosi"`` or ``"iemocap"`` (:mod:`cggm_seg.apps.multiview.vector_metrics`).
        views: view name -> width, in input order (the input is the views concatenated on the last axis).
        feature_names: view name -> the names of its columns (vector datasets; empty for sequences).
        x: split (``"training"``, ``"validation"``, ``"test"``) -> float32 inputs ``N x sum(widths)``
            (vectors) or ``N x T x sum(widths)`` (aligned sequences).
        y: split -> targets: int64 ``N`` class indices, or float32 ``N x 1`` (standardised for the
            scikit-learn regression; see ``target_mean``, ``target_std``).
        num_classes: classes of a classification task (0 for regression).
        target_mean, target_std: the regression target = ``y * target_std + target_mean``.
        class_names: names of the classes, where the dataset has them.
    """

    name: str
    task: str
    metrics: str
    views: dict[str, int]
    x: dict[str, torch.Tensor]
    y: dict[str, torch.Tensor]
    num_classes: int = 0
    feature_names: dict[str, list[str]] = field(default_factory=dict)
    target_mean: float = 0.0
    target_std: float = 1.0
    class_names: list[str] = field(default_factory=list)

    @property
    def out_features(self) -> int:
        """Outputs of the network: the number of classes, or 1 for regression."""
        return self.num_classes if self.task == "classification" else 1

    @property
    def sequential(self) -> bool:
        """Whether the inputs are sequences ``N x T x D`` (aligned features)."""
        return self.x["training"].dim() == 3

    @property
    def score(self) -> str:
        """The heads' score for balancing: true-class probability (classification), 1 / (1 + MAE)."""
        return "true_class_probability" if self.task == "classification" else "inverse_mae"

    def check_encoder(self, encoder: str) -> None:
        """Check that ``encoder`` (:class:`~cggm_seg.networks.MultiViewNet`'s) reads this data.

        Raises:
            ValueError: an unknown encoder, an ``mlp`` on sequences ``N x T x D``, or a sequence
                encoder on vectors.
        """
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}.")
        shape = tuple(self.x["training"].shape)
        if encoder == "mlp" and self.sequential:
            raise ValueError(
                f"{self.name}: encoder 'mlp' reads vectors N x D, but the views are sequences {shape}; "
                "use --encoder gru or transformer, or store the views as N x D."
            )
        if encoder != "mlp" and not self.sequential:
            raise ValueError(
                f"{self.name}: encoder {encoder!r} reads sequences N x T x D, but the views are vectors "
                f"{shape}; use --encoder mlp."
            )

    def records(self, split: str) -> list[dict[str, torch.Tensor]]:
        """The split as MONAI-style dicts ``{"image": x_i, "label": y_i}`` for a ``Dataset``."""
        return [{"image": x, "label": y} for x, y in zip(self.x[split], self.y[split])]

    def sizes(self) -> dict[str, int]:
        return {split: int(self.x[split].shape[0]) for split in _SPLITS}

    def describe(self) -> str:
        views = ", ".join(f"{v} ({w})" for v, w in self.views.items())
        sizes = " / ".join(str(n) for n in self.sizes().values())
        kind = f"{self.num_classes} classes" if self.task == "classification" else "regression"
        return f"{self.name}: {kind}; views {views}; train / val / test {sizes}"


def standardise(train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Standardise every array per feature (the last axis) with the mean and standard deviation of
    ``train`` over all its other axes (constant features: divided by 1); float32."""
    axes = tuple(range(train.ndim - 1))
    mean = train.mean(axis=axes, keepdims=True)
    std = train.std(axis=axes, keepdims=True)
    std = np.where(std > 1e-8, std, 1.0)
    return tuple(((a - mean) / std).astype(np.float32) for a in (train, *others))


def stratified_split(
    strata: np.ndarray, fractions: Sequence[float], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of a seeded train / validation / test split that keeps each stratum's proportion.

    Args:
        strata: one stratum per sample (class labels, or quantile bins of a regression target).
        fractions: three positive fractions (normalised to sum to 1).
        seed: the split's seed.

    Raises:
        ValueError: not three positive fractions, or a split that would be empty.
    """
    from sklearn.model_selection import train_test_split

    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or (f <= 0).any():
        raise ValueError(
            f"fractions must be three positive numbers (train, val, test), got {list(fractions)}."
        )
    f = f / f.sum()
    index = np.arange(len(strata))
    try:
        train, rest = train_test_split(index, train_size=f[0], random_state=seed, stratify=strata)
        val, test = train_test_split(
            rest, train_size=f[1] / (f[1] + f[2]), random_state=seed, stratify=strata[rest]
        )
    except ValueError as err:
        raise ValueError(
            f"cannot split {len(strata)} samples by fractions {f.round(3).tolist()}: {err}"
        ) from None
    return np.sort(train), np.sort(val), np.sort(test)
