"""cggm_seg.evaluation: BraTS region metrics, test-set reports and plots."""

from cggm_seg.evaluation.audit import sequence_subsets, shapley_values, subset_name
from cggm_seg.evaluation.inference import NetworkWithHeads, prediction_name_formatter
from cggm_seg.evaluation.metrics import region_metrics, summarise_cases
from cggm_seg.evaluation.plots import plot_balance_history, plot_shapley, plot_subset_dice
from cggm_seg.evaluation.report import (
    SegmentationTestReport,
    format_subset_table,
    format_table,
    missing_sequence_summary,
)

__all__ = [
    "sequence_subsets",
    "shapley_values",
    "subset_name",
    "plot_shapley",
    "plot_subset_dice",
    "format_subset_table",
    "missing_sequence_summary",
    "NetworkWithHeads",
    "prediction_name_formatter",
    "region_metrics",
    "summarise_cases",
    "plot_balance_history",
    "SegmentationTestReport",
    "format_table",
]
