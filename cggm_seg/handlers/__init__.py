"""MONAI handlers that attach cggm_seg's balancing methods to any SupervisedTrainer."""

from cggm_seg.handlers.balancing_handler import BalancingHandler, HeadBalancingHandler
from cggm_seg.handlers.cggm_handler import CGGMHandler
from cggm_seg.handlers.curve import ValidationCurve
from cggm_seg.handlers.factory import (
    METHODS,
    balancing_handler,
    handler_list,
    make_balancing_handler,
    present,
)
from cggm_seg.handlers.guard import NonFiniteGuard, NonFiniteTrainingError
from cggm_seg.handlers.monitor_handler import HeadMonitorHandler
from cggm_seg.handlers.ogmge_handler import OGMGEHandler
from cggm_seg.handlers.resume import (
    BestCheckpoint,
    RandomStates,
    ResumableCheckpoint,
    RunLock,
    atomic_save,
    latest_checkpoint,
)

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
    "make_balancing_handler",
    "present",
    "HeadMonitorHandler",
    "OGMGEHandler",
    "BestCheckpoint",
    "RandomStates",
    "ResumableCheckpoint",
    "RunLock",
    "atomic_save",
    "latest_checkpoint",
]
