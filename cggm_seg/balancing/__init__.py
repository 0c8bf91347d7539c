"""Balanced multimodal learning in plain PyTorch: scores, the balance tracker, CGGM and OGM-GE.

Nothing here knows Ignite or MONAI bundles; a hand-written training loop uses it directly and
:mod:`cggm_seg.handlers` adapts it to MONAI's SupervisedTrainer. See ``docs/balancing.md``.
"""

from cggm_seg.balancing.branches import (
    BranchSpec,
    FeatureTap,
    branch_parameters,
    detach_features,
    resolve_branches,
    resolve_module,
    unwrap_model,
)
from cggm_seg.balancing.cggm import (
    CGGM,
    DIRECTIONS,
    MAGNITUDES,
    branch_param_groups,
    direction_loss,
    restore_learning_rates,
    scale_gradients,
    scale_learning_rates,
)
from cggm_seg.balancing.distributed import mean_over_ranks
from cggm_seg.balancing.heads import (
    HeadStep,
    HeadTrainer,
    flat_gradients,
    flat_parameters,
    pool_sublattice,
    pool_target,
)
from cggm_seg.balancing.monitor import HeadMonitor
from cggm_seg.balancing.ogmge import OGMGE, discrepancy_ratios, ogm_coefficients
from cggm_seg.balancing.scores import (
    SCORES,
    ScoreFn,
    accuracy,
    dice_score,
    get_score,
    inverse_mae,
    region_true_class_probability,
    sign_accuracy,
    softmax_dice_score,
    softmax_true_class_probability,
    true_class_probability,
)
from cggm_seg.balancing.tracker import GUARDED_DEFAULTS, PRESETS, BalanceTracker, balance_coefficients

__all__ = [
    "BranchSpec",
    "FeatureTap",
    "branch_parameters",
    "detach_features",
    "resolve_branches",
    "resolve_module",
    "unwrap_model",
    "CGGM",
    "DIRECTIONS",
    "MAGNITUDES",
    "branch_param_groups",
    "direction_loss",
    "restore_learning_rates",
    "scale_gradients",
    "scale_learning_rates",
    "mean_over_ranks",
    "HeadStep",
    "HeadTrainer",
    "HeadMonitor",
    "flat_gradients",
    "flat_parameters",
    "pool_sublattice",
    "pool_target",
    "OGMGE",
    "discrepancy_ratios",
    "ogm_coefficients",
    "SCORES",
    "ScoreFn",
    "accuracy",
    "dice_score",
    "get_score",
    "inverse_mae",
    "region_true_class_probability",
    "sign_accuracy",
    "softmax_dice_score",
    "softmax_true_class_probability",
    "true_class_probability",
    "GUARDED_DEFAULTS",
    "PRESETS",
    "BalanceTracker",
    "balance_coefficients",
]
