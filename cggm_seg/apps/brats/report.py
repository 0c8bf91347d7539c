"""The final test evaluation of a BraTS run: per-region Dice and HD95, each modality head's Dice,
and the missing-sequence audit.

Run after training (the bundles' ``run`` list ends with it): the best checkpoint selected on
the validation split is loaded, every held-out test case is segmented with sliding-window
inference on the full volume, and the results are printed as a table and written to the run
folder as ``metrics.json`` (summary + per case) and ``metrics.csv`` (one row per case), with a
plot of the balancing history (``balance.png``) when the run had a balancing handler.

The audit (:mod:`cggm_seg.evaluation.audit`) segments every case again with each non-empty
subset of the sequences, the missing ones zero-filled after intensity normalisation: Dice per
region on each subset, their mean (the 15-subset mean for BraTS) and each sequence's Shapley value
for the mean Dice, with a subset x region heat map (``missing_sequences.png``) and the Shapley
bars (``shapley.png``).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from cggm_seg.apps.brats.layouts import MODALITIES, REGIONS
from cggm_seg.apps.brats.region_metrics import region_metrics, summarise_cases
from cggm_seg.apps.brats.sequences import zero_sequences
from cggm_seg.evaluation.audit import sequence_subsets, shapley_values, subset_name
from cggm_seg.evaluation.inference import NetworkWithHeads
from cggm_seg.evaluation.plots import plot_shapley, plot_subset_dice
from cggm_seg.evaluation.reporting import load_best_checkpoint, plot_balance

__all__ = [
    "SegmentationTestReport",
    "format_table",
    "format_subset_table",
    "missing_sequence_summary",
    "load_best_checkpoint",
    "plot_balance",
]


def _spacing(image: Any) -> tuple[float, float, float]:
    pixdim = getattr(image, "pixdim", None)
    if pixdim is None:
        return (1.0, 1.0, 1.0)
    values = pixdim[0] if isinstance(pixdim, (list, tuple)) else pixdim
    values = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    return tuple(float(v) for v in values[-3:])


def format_table(summary: Mapping[str, Mapping[str, float]], title: str = "") -> str:
    """A plain-text table: rows = Dice (and HD95, head Dice), columns = TC, WT, ET, mean; mean ± std."""
    rows = []
    prefixes = ["dice", "hd95"] + sorted({k.rsplit("_", 1)[0] for k in summary if k.startswith("head_dice_")})
    for prefix in prefixes:
        cells = []
        for region in (*REGIONS, "mean"):
            key = f"{prefix}_{region}"
            if key in summary:
                cells.append(f"{summary[key]['mean']:.4f} ± {summary[key]['std']:.4f}")
            else:
                cells.append("-")
        if any(c != "-" for c in cells):
            label = {"dice": "Dice (fused)", "hd95": "HD95 mm (fused)"}.get(
                prefix, prefix.replace("head_dice_", "Dice head ")
            )
            rows.append((label, *cells))
    header = ("", *[r.upper() for r in REGIONS], "mean")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [title] if title else []
    lines.append("  ".join(str(c).ljust(w) for c, w in zip(header, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def missing_sequence_summary(
    summary: Mapping[str, Mapping[str, float]], sequences: Sequence[str]
) -> dict[str, Any]:
    """The audit's summary from the per-case means: each subset's Dice, their mean, Shapley values.

    Args:
        summary: :func:`summarise_cases` of rows holding ``subset_<name>_dice_<region>``.
        sequences: the image's sequences, in channel order.

    Returns:
        ``{"sequences", "subsets": [{"sequences", "name", "dice_tc", ..., "dice_mean"}],
        "subset_mean", "shapley": {sequence: value}}``; the value of a coalition is the mean Dice
        over cases (so the Shapley values are the means of the per-case values), ``v(empty) = 0``.
    """
    subsets = []
    for subset in sequence_subsets(sequences):
        name = subset_name(subset)
        row = {"sequences": list(subset), "name": name}
        row.update({f"dice_{r}": summary[f"subset_{name}_dice_{r}"]["mean"] for r in (*REGIONS, "mean")})
        subsets.append(row)
    values = {frozenset(row["sequences"]): row["dice_mean"] for row in subsets}
    return {
        "sequences": list(sequences),
        "subsets": subsets,
        "subset_mean": sum(row["dice_mean"] for row in subsets) / len(subsets),
        "shapley": shapley_values(values, sequences),
    }


def format_subset_table(audit: Mapping[str, Any]) -> str:
    """The audit as text: one row per subset (Dice TC, WT, ET, mean), then the mean and Shapley values."""
    width = max(len(row["name"]) for row in audit["subsets"])
    lines = ["missing-sequence audit (absent sequences zero-filled after normalisation)"]
    lines.append("  ".join(["sequences".ljust(width), *[f"{r.upper():>6}" for r in REGIONS], "  mean"]))
    for row in audit["subsets"]:
        cells = [f"{row[f'dice_{r}']:6.3f}" for r in (*REGIONS, "mean")]
        lines.append("  ".join([row["name"].ljust(width), *cells]))
    lines.append(f"mean over the {len(audit['subsets'])} subsets: {audit['subset_mean']:.4f}")
    shapley = ", ".join(f"{m} {v:.4f}" for m, v in audit["shapley"].items())
    lines.append(f"Shapley value of each sequence (mean Dice): {shapley}")
    return "\n".join(lines)


class SegmentationTestReport:
    """Evaluate the held-out test split of a BraTS run and write the metrics files and plot.

    Args:
        network: the fused network (weights are loaded from ``checkpoint`` when it exists).
        dataloader: the test cases, batch size 1, dicts with ``image`` (``1 x M x D x H x W``,
            a MetaTensor so the voxel spacing is known), ``label`` (``1 x 3 x D x H x W`` regions)
            and ``case_id``.
        inferer: e.g. ``SlidingWindowInferer(roi_size, overlap=0.5)``.
        output_dir: the run folder where ``metrics.json``, ``metrics.csv`` and ``balance.png`` go.
        heads: modality -> light head, to report each head's Dice too (``None``: fused only).
        checkpoint: the best model selected on validation (keys ``network`` and ``heads``, or the
            network's bare state dict); when the file does not exist the weights in memory are
            evaluated (and the report says so), unless ``require_checkpoint``.
        balancing: the run's CGGM / OGM-GE handler, for ``balance.png`` (``None``: no plot).
        device: where inference runs. Defaults to the network's device.
        hd95: also compute HD95 per region. Defaults to True.
        threshold: probability threshold of the sigmoid outputs. Defaults to 0.5.
        title: printed above the table and used in the plot.
        sequences: names of the image's channels, in order (``None``: the heads' modalities, else
            the canonical BraTS order when the image has four channels).
        audit: run the missing-sequence audit (every non-empty subset of ``sequences``). Defaults
            to True; it costs one more sliding-window pass per subset and case.
        require_checkpoint: fail when ``checkpoint`` does not exist (auditing a given model)
            instead of evaluating the weights in memory. Defaults to False.

    Raises:
        FileNotFoundError: in :meth:`run`, ``require_checkpoint`` and no checkpoint file.
    """

    def __init__(
        self,
        network: nn.Module,
        dataloader: Iterable[Mapping[str, Any]],
        inferer: Any,
        output_dir: str | Path,
        heads: Mapping[str, nn.Module] | None = None,
        checkpoint: str | Path | None = None,
        balancing: Any = None,
        device: torch.device | str | None = None,
        hd95: bool = True,
        threshold: float = 0.5,
        title: str = "",
        sequences: Sequence[str] | None = None,
        audit: bool = True,
        require_checkpoint: bool = False,
    ) -> None:
        self.network = network
        self.dataloader = dataloader
        self.inferer = inferer
        self.output_dir = Path(output_dir)
        self.heads = heads
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.balancing = balancing
        self.device = device
        self.hd95 = hd95
        self.threshold = threshold
        self.title = title
        self.sequences = None if sequences is None else tuple(sequences)
        self.audit = audit
        self.require_checkpoint = require_checkpoint
        self._used_sequences: tuple[str, ...] = ()
        self.logger = logging.getLogger("cggm_seg.evaluation")

    def _sequences(self, channels: int) -> tuple[str, ...]:
        names = self.sequences or (tuple(self.heads) if self.heads else None)
        if names is None and channels == len(MODALITIES):
            names = MODALITIES
        if names is None or len(names) != channels:
            raise ValueError(
                f"the test images have {channels} channels; give `sequences`, one name per channel "
                f"(got {None if names is None else list(names)})."
            )
        return tuple(names)

    def _load_checkpoint(self) -> str:
        return load_best_checkpoint(self.network, self.heads, self.checkpoint, self.require_checkpoint)

    def run(self) -> dict[str, Any]:
        """Evaluate every test case; print the table; write the files. Returns the metrics dict."""
        source = self._load_checkpoint()
        model: nn.Module = self.network if not self.heads else NetworkWithHeads(self.network, self.heads)
        device = (
            torch.device(self.device) if self.device is not None else next(self.network.parameters()).device
        )
        model.eval()
        per_case: list[dict[str, Any]] = []
        try:
            with torch.no_grad():
                for batch in tqdm(self.dataloader, desc="test", unit="case"):
                    per_case.append(self._evaluate_case(model, batch, device, len(per_case)))
        finally:
            if isinstance(model, NetworkWithHeads):
                model.remove()
        if not per_case:
            raise ValueError("the test split is empty: nothing to evaluate")
        summary = summarise_cases(per_case)
        title = f"{self.title + ' - ' if self.title else ''}test set: {len(per_case)} cases, {source}"
        table = format_table(summary, title)
        result = {"source": source, "num_cases": len(per_case), "summary": summary}
        if self.audit:
            result["missing_sequences"] = missing_sequence_summary(summary, self._used_sequences)
            table += "\n\n" + format_subset_table(result["missing_sequences"])
        print(table, flush=True)
        result["cases"] = per_case
        self._write(result)
        return result

    def _evaluate_case(
        self, model: nn.Module, batch: Mapping[str, Any], device: torch.device, index: int
    ) -> dict[str, Any]:
        image, label = batch["image"].to(device), batch["label"]
        out = self.inferer(image, model)
        outputs = out if isinstance(out, Mapping) else {"pred": out}
        spacing = _spacing(batch["image"])
        truth = label[0].cpu()
        row: dict[str, Any] = {"case_id": _first(batch.get("case_id", f"case{index}"))}
        fused = torch.sigmoid(outputs["pred"][0].float()).cpu() > self.threshold
        row.update(region_metrics(fused, truth, spacing=spacing, hd95=self.hd95))
        for modality in self.heads or {}:
            head = torch.sigmoid(outputs[modality][0].float()).cpu() > self.threshold
            dice = region_metrics(head, truth, hd95=False)
            row.update({f"head_dice_{modality}_{k[5:]}": v for k, v in dice.items()})
        if self.audit:
            sequences = self._used_sequences = self._sequences(int(image.shape[1]))
            for subset in sequence_subsets(sequences):
                if len(subset) == len(sequences):
                    dice = {k: v for k, v in row.items() if k.startswith("dice_")}
                else:
                    keep = [s in subset for s in sequences]
                    logits = self.inferer(zero_sequences(image, keep), self.network)
                    pred = torch.sigmoid(logits[0].float()).cpu() > self.threshold
                    dice = region_metrics(pred, truth, hd95=False)
                row.update({f"subset_{subset_name(subset)}_{k}": v for k, v in dice.items()})
        return row

    def _write(self, result: Mapping[str, Any]) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "metrics.json").write_text(json.dumps(result, indent=2))
        cases: Sequence[Mapping[str, Any]] = result["cases"]
        with open(self.output_dir / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(cases[0]))
            writer.writeheader()
            writer.writerows(cases)
        if "missing_sequences" in result:
            audit = result["missing_sequences"]
            plot_subset_dice(audit["subsets"], self.output_dir / "missing_sequences.png", title=self.title)
            plot_shapley(audit["shapley"], self.output_dir / "shapley.png", title=self.title)
        png = plot_balance(self.balancing, self.output_dir / "balance.png", self.title)
        if png is not None:
            self.logger.info(f"balancing history plotted to {png}")
        self.logger.info(f"metrics written to {self.output_dir / 'metrics.json'} and metrics.csv")


def _first(value: Any) -> str:
    return str(value[0] if isinstance(value, (list, tuple)) else value)
