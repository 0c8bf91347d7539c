"""cggm_seg.evaluation: the missing-modality audit (subsets, exact Shapley values), the network with
its heads at test time, what every test report shares, and plots. The applications' reports are
:class:`cggm_seg.apps.brats.SegmentationTestReport` and :class:`cggm_seg.apps.multiview.VectorTestReport`."""

from cggm_seg.evaluation.audit import sequence_subsets, shapley_values, subset_name
from cggm_seg.evaluation.inference import NetworkWithHeads
from cggm_seg.evaluation.plots import plot_balance_history, plot_shapley, plot_subset_dice, plot_subset_metric
from cggm_seg.evaluation.reporting import load_best_checkpoint, plot_balance

__all__ = [
    "sequence_subsets",
    "shapley_values",
    "subset_name",
    "NetworkWithHeads",
    "plot_balance_history",
    "plot_shapley",
    "plot_subset_dice",
    "plot_subset_metric",
    "load_best_checkpoint",
    "plot_balance",
]
