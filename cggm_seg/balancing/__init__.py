"""Balanced multimodal learning in plain PyTorch: the method interface, CGGM, OGM-GE, the joint
monitor, the heads, scores and the balance tracker.

Nothing here knows Ignite or MONAI bundles; a hand-written training loop uses it directly and
:class:`cggm_seg.handlers.BalancingHandler` runs any method on MONAI's SupervisedTrainer. See
``docs/reuse.md`` and, for the equations, ``docs/methods.md``.
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
from cggm_seg.balancing.distributed import mean_over_ranks
from cggm_seg.balancing.head_trainer import (
    HeadOptions,
    HeadStep,
    HeadTrainer,
    flat_gradients,
    flat_parameters,
    pool_sublattice,
    pool_target,
)
from cggm_seg.balancing.magnitude import (
    ADAPTIVE_OPTIMIZERS,
    MAGNITUDES,
    BranchMagnitude,
    branch_param_groups,
    restore_learning_rates,
    scale_gradients,
    scale_learning_rates,
)
from cggm_seg.balancing.method import METHODS, BalancingMethod, get_method_class, pick_method, register_method

# the methods register themselves in METHODS when imported
from cggm_seg.balancing.monitor import HeadMonitor  # isort: skip
from cggm_seg.balancing.cggm import CGGM, DIRECTIONS, direction_loss  # isort: skip
from cggm_seg.balancing.ogmge import OGMGE, discrepancy_ratios, ogm_coefficients  # isort: skip
from cggm_seg.balancing.mmpareto import MMPareto, min_norm_weight, pareto_combine  # isort: skip
from cggm_seg.balancing.robust import (
    CONSISTENCIES,
    SAMPLERS,
    RobustIteration,
    RobustTraining,
    consistency,
    pick_recipe,
    sample_subsets,
    trainable_parameters,
)
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
    "mean_over_ranks",
    "HeadOptions",
    "HeadStep",
    "HeadTrainer",
    "flat_gradients",
    "flat_parameters",
    "pool_sublattice",
    "pool_target",
    "ADAPTIVE_OPTIMIZERS",
    "MAGNITUDES",
    "BranchMagnitude",
    "branch_param_groups",
    "restore_learning_rates",
    "scale_gradients",
    "scale_learning_rates",
    "METHODS",
    "BalancingMethod",
    "get_method_class",
    "pick_method",
    "register_method",
    "HeadMonitor",
    "CGGM",
    "DIRECTIONS",
    "direction_loss",
    "OGMGE",
    "discrepancy_ratios",
    "ogm_coefficients",
    "MMPareto",
    "min_norm_weight",
    "pareto_combine",
    "CONSISTENCIES",
    "SAMPLERS",
    "RobustIteration",
    "RobustTraining",
    "consistency",
    "pick_recipe",
    "sample_subsets",
    "trainable_parameters",
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
