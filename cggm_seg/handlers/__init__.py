"""MONAI handlers that attach cggm_seg's balancing methods to any SupervisedTrainer."""

from cggm_seg.handlers.balancing_handler import BalancingHandler, HeadBalancingHandler
from cggm_seg.handlers.best_checkpoint import BestCheckpoint
from cggm_seg.handlers.cggm_handler import CGGMHandler
from cggm_seg.handlers.checkpoint import ResumableCheckpoint, atomic_save, latest_checkpoint
from cggm_seg.handlers.curve import ValidationCurve
from cggm_seg.handlers.definition import RunDefinitionError, run_definition
from cggm_seg.handlers.factory import (
    METHODS,
    balancing_handler,
    handler_list,
    present,
)
from cggm_seg.handlers.guard import NonFiniteGuard, NonFiniteTrainingError
from cggm_seg.handlers.monitor_handler import HeadMonitorHandler
from cggm_seg.handlers.ogmge_handler import OGMGEHandler
from cggm_seg.handlers.random_states import RandomStates
from cggm_seg.handlers.run_lock import RunLock

__all__ = [
    "BalancingHandler",
    "HeadBalancingHandler",
    "balancing_handler",
    "CGGMHandler",
    "ValidationCurve",
    "NonFiniteGuard",
    "NonFiniteTrainingError",
    "METHODS",
    "handler_list",
    "present",
    "HeadMonitorHandler",
    "OGMGEHandler",
    "BestCheckpoint",
    "RandomStates",
    "ResumableCheckpoint",
    "RunLock",
    "atomic_save",
    "latest_checkpoint",
    "RunDefinitionError",
    "run_definition",
]
