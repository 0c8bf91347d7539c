"""cggm_seg.evaluation: BraTS region metrics, test-set reports and plots."""

from cggm_seg.evaluation.inference import NetworkWithHeads, prediction_name_formatter
from cggm_seg.evaluation.metrics import region_metrics, summarise_cases
from cggm_seg.evaluation.plots import plot_balance_history
from cggm_seg.evaluation.report import SegmentationTestReport, format_table

__all__ = [
    "NetworkWithHeads",
    "prediction_name_formatter",
    "region_metrics",
    "summarise_cases",
    "plot_balance_history",
    "SegmentationTestReport",
    "format_table",
]
