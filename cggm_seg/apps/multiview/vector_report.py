"""The final test evaluation of a classification or regression run, with the missing-view audit.

The multi-view counterpart of :class:`~cggm_seg.apps.brats.SegmentationTestReport`: the best
checkpoint selected on validation is loaded; the test split is predicted by the fused network
and by every view's light head; then by the network given every non-empty subset of the views,
the missing ones zero-filled (the inputs are standardised on the training split, so zero is the
training mean, as a zero-filled sequence is in BraTS). The audit's value of a coalition is the
family's main metric (:data:`~cggm_seg.apps.multiview.vector_metrics.MAIN_METRIC`: accuracy, or R^2);
the empty coalition's value is measured too (every view zero-filled: the training mean input),
and the Shapley values share out the difference, ``sum_i phi_i = v(all) - v(empty)``.

Written to the run folder: ``metrics.json`` (everything), ``metrics.csv`` (one row per input:
all views, each head, each subset), ``missing_views.png``, ``shapley.png`` and ``balance.png``.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cggm_seg.apps.multiview.vector_metrics import MAIN_METRIC, task_metrics
from cggm_seg.apps.multiview.views import ViewData
from cggm_seg.evaluation.audit import sequence_subsets, shapley_values, subset_name
from cggm_seg.evaluation.inference import NetworkWithHeads
from cggm_seg.evaluation.plots import plot_shapley, plot_subset_metric
from cggm_seg.evaluation.reporting import load_best_checkpoint, plot_balance

__all__ = ["VectorTestReport", "zero_views"]


def zero_views(x: torch.Tensor, widths: Mapping[str, int], keep: Mapping[str, bool]) -> torch.Tensor:
    """``x`` (views concatenated on the last axis, in ``widths``' order) with the views not kept set to 0."""
    out = x.clone()
    start = 0
    for view, width in widths.items():
        if not keep[view]:
            out[..., start : start + width] = 0
        start += width
    if start != x.shape[-1]:
        raise ValueError(
            f"the views' widths {dict(widths)} add up to {start}, the input has {x.shape[-1]} features."
        )
    return out


class VectorTestReport:
    """Evaluate a multi-view run's test split and write the metrics files and plots.

    Args:
        network: the fused :class:`~cggm_seg.networks.MultiViewNet` (or any network with the contract).
        data: the run's :class:`~cggm_seg.apps.brats.ViewData` (its ``test`` split is evaluated).
        output_dir: the run folder.
        heads: view -> light head (``None``: the fused model only).
        checkpoint: the best-on-validation checkpoint (see
            :func:`~cggm_seg.apps.brats.report.load_best_checkpoint`).
        balancing: the run's balancing handler, for ``balance.png``.
        title: printed above the table.
        audit: run the missing-view audit. Defaults to True.
        require_checkpoint: fail when ``checkpoint`` does not exist.
        batch_size: samples per forward pass.
    """

    def __init__(
        self,
        network: nn.Module,
        data: ViewData,
        output_dir: str | Path,
        heads: Mapping[str, nn.Module] | None = None,
        checkpoint: str | Path | None = None,
        balancing: Any = None,
        title: str = "",
        audit: bool = True,
        require_checkpoint: bool = False,
        batch_size: int = 512,
    ) -> None:
        self.network = network
        self.data = data
        self.output_dir = Path(output_dir)
        self.heads = heads
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.balancing = balancing
        self.title = title
        self.audit = audit
        self.require_checkpoint = require_checkpoint
        self.batch_size = int(batch_size)
        self.logger = logging.getLogger("cggm_seg.evaluation")

    def _predict(self, model: nn.Module, x: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        parts: list[dict[str, torch.Tensor]] = []
        for chunk in torch.split(x, self.batch_size):
            out = model(chunk.to(device))
            parts.append(
                {k: v.float().cpu() for k, v in (out if isinstance(out, Mapping) else {"pred": out}).items()}
            )
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        d = self.data
        return task_metrics(d.metrics, output, target, scale=d.target_std, offset=d.target_mean)

    def run(self) -> dict[str, Any]:
        """Evaluate the test split; print the tables; write the files. Returns the metrics dict."""
        source = load_best_checkpoint(self.network, self.heads, self.checkpoint, self.require_checkpoint)
        x, y = self.data.x["test"], self.data.y["test"]
        if x.shape[0] == 0:
            raise ValueError("the test split is empty: nothing to evaluate")
        device = next(self.network.parameters()).device
        model: nn.Module = self.network if not self.heads else NetworkWithHeads(self.network, self.heads)
        model.eval()
        try:
            with torch.no_grad():
                outputs = self._predict(model, x, device)
                result: dict[str, Any] = {
                    "source": source,
                    "dataset": self.data.name,
                    "task": self.data.task,
                    "metric_family": self.data.metrics,
                    "num_samples": int(x.shape[0]),
                    "views": dict(self.data.views),
                    "metrics": self._metrics(outputs["pred"], y),
                    "heads": {v: self._metrics(outputs[v], y) for v in self.heads or {}},
                }
                if self.audit:
                    result["missing_views"] = self._audit(x, y, device)
        finally:
            if isinstance(model, NetworkWithHeads):
                model.remove()
        print(self.format(result), flush=True)
        self._write(result)
        return result

    def _audit(self, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> dict[str, Any]:
        views = list(self.data.views)
        main = MAIN_METRIC[self.data.metrics]
        rows = []
        for subset in sequence_subsets(views):
            keep = {v: v in subset for v in views}
            out = self._predict(self.network, zero_views(x, self.data.views, keep), device)["pred"]
            rows.append({"views": list(subset), "name": subset_name(subset), **self._metrics(out, y)})
        empty_out = self._predict(self.network, torch.zeros_like(x), device)["pred"]
        empty = self._metrics(empty_out, y)[main]
        values = {frozenset(r["views"]): r[main] for r in rows}
        return {
            "views": views,
            "main_metric": main,
            "subsets": rows,
            "subset_mean": sum(r[main] for r in rows) / len(rows),
            "empty": empty,
            "shapley": shapley_values(values, views, empty=empty),
        }

    def format(self, result: Mapping[str, Any]) -> str:
        """The report as text: the fused model's and each head's metrics, then the audit."""
        head = f"{self.title} - " if self.title else ""
        title = f"{head}test set: {result['num_samples']} samples, {result['source']}"
        names = list(result["metrics"])
        rows = [("all views", result["metrics"])] + [(f"head {v}", m) for v, m in result["heads"].items()]
        audit = result.get("missing_views")
        if audit:
            rows += [(f"only {r['name']}", r) for r in audit["subsets"][:-1]]
        width = max(len(r[0]) for r in rows)
        lines = [title, "  ".join(["".ljust(width), *[f"{n:>11}" for n in names]])]
        lines += ["  ".join([label.ljust(width), *[f"{m[n]:11.4f}" for n in names]]) for label, m in rows]
        if audit:
            main = audit["main_metric"]
            lines.append(
                f"mean {main} over the {len(audit['subsets'])} view subsets: {audit['subset_mean']:.4f} "
                f"(no view: {audit['empty']:.4f})"
            )
            lines.append(
                f"Shapley value of each view ({main}): "
                + ", ".join(f"{v} {phi:.4f}" for v, phi in audit["shapley"].items())
            )
        return "\n".join(lines)

    def _write(self, result: Mapping[str, Any]) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "metrics.json").write_text(json.dumps(result, indent=2))
        rows = [{"input": "all", **result["metrics"]}]
        rows += [{"input": f"head:{v}", **m} for v, m in result["heads"].items()]
        audit = result.get("missing_views")
        if audit:
            rows += [{"input": f"subset:{r['name']}", **{k: v for k, v in r.items() if k not in ("views", "name")}}  # noqa: E501
                     for r in audit["subsets"]]  # fmt: skip
        with open(self.output_dir / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        if audit:
            main = audit["main_metric"]
            plot_subset_metric(
                audit["subsets"], main, self.output_dir / "missing_views.png", title=self.title
            )
            plot_shapley(
                audit["shapley"],
                self.output_dir / "shapley.png",
                title=self.title,
                metric=main,
                players="view",
            )
        png = plot_balance(self.balancing, self.output_dir / "balance.png", self.title)
        if png is not None:
            self.logger.info(f"balancing history plotted to {png}")
        self.logger.info(f"metrics written to {self.output_dir / 'metrics.json'} and metrics.csv")
