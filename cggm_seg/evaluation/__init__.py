"""cggm_seg.evaluation: BraTS region metrics, classification / regression metrics, test-set reports
with the missing-modality audit, and plots."""

from cggm_seg.evaluation.audit import sequence_subsets, shapley_values, subset_name
from cggm_seg.evaluation.inference import NetworkWithHeads, prediction_name_formatter
from cggm_seg.evaluation.metrics import region_metrics, summarise_cases
from cggm_seg.evaluation.plots import plot_balance_history, plot_shapley, plot_subset_dice, plot_subset_metric
from cggm_seg.evaluation.report import (
    SegmentationTestReport,
    format_subset_table,
    format_table,
    missing_sequence_summary,
)
from cggm_seg.evaluation.vector_metrics import (
    MAIN_METRIC,
    METRIC_FAMILIES,
    classification_metrics,
    mosi_metrics,
    regression_metrics,
    task_metrics,
)
from cggm_seg.evaluation.vector_report import VectorTestReport, zero_views

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
    "plot_subset_metric",
    "MAIN_METRIC",
    "METRIC_FAMILIES",
    "classification_metrics",
    "regression_metrics",
    "mosi_metrics",
    "task_metrics",
    "VectorTestReport",
    "zero_views",
]
