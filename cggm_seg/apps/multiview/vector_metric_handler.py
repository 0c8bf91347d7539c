"""The validation metric of the classification and regression bundles, as an Ignite metric."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.utils import IgniteInfo, min_version, optional_import

from cggm_seg.apps.multiview.vector_metrics import MAIN_METRIC, METRIC_FAMILIES, task_metrics

Metric, _ = optional_import("ignite.metrics", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Metric")

__all__ = ["VectorMetric", "vector_key_metric"]


def _stack(x: Any) -> torch.Tensor:
    """A batch tensor from a batch or from a decollated list of per-sample tensors."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    return torch.stack([torch.as_tensor(v).detach() for v in x])


class VectorMetric(Metric):
    """One metric of :func:`~cggm_seg.apps.multiview.vector_metrics.task_metrics` over a whole epoch.

    Args:
        family: ``classification``, ``regression``, ``mosi`` or ``iemocap``.
        name: the metric to return (default: the family's :data:`MAIN_METRIC`).
        scale, offset: regression targets back in their units (``data.target_std``, ``target_mean``).
        output_transform: engine output -> ``(pred, label)``; default: the MONAI ``pred`` and ``label`` keys.
    """

    def __init__(
        self,
        family: str,
        name: str | None = None,
        scale: float = 1.0,
        offset: float = 0.0,
        output_transform: Callable | None = None,
    ) -> None:
        if family not in METRIC_FAMILIES:
            raise ValueError(f"unknown metric family {family!r}; available: {list(METRIC_FAMILIES)}.")
        self.family = family
        self.name = name or MAIN_METRIC[family]
        self.scale, self.offset = float(scale), float(offset)
        if output_transform is None:
            from monai.handlers import from_engine

            output_transform = from_engine(["pred", "label"])
        super().__init__(output_transform=output_transform)

    def reset(self) -> None:
        self._pred: list[torch.Tensor] = []
        self._label: list[torch.Tensor] = []

    def update(self, output: Sequence[Any]) -> None:
        pred, label = output
        self._pred.append(_stack(pred).float().cpu())
        self._label.append(_stack(label).cpu())

    def compute(self) -> float:
        if not self._pred:
            raise RuntimeError("VectorMetric needs at least one batch before compute().")
        metrics = task_metrics(
            self.family, torch.cat(self._pred), torch.cat(self._label), self.scale, self.offset
        )
        if self.name not in metrics:
            raise KeyError(f"family {self.family!r} has no metric {self.name!r}; it has {sorted(metrics)}.")
        return float(metrics[self.name])


def vector_key_metric(data: Any, prefix: str = "val") -> dict[str, VectorMetric]:
    """``{"<prefix>_<main metric>": VectorMetric}`` for a :class:`~cggm_seg.apps.brats.ViewData`: the
    evaluator's key metric (model selection on the validation split)."""
    main = MAIN_METRIC[data.metrics]
    return {f"{prefix}_{main}": VectorMetric(data.metrics, main, data.target_std, data.target_mean)}
