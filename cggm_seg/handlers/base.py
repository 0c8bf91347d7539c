"""Former home of the balancing handler's base class (now :mod:`cggm_seg.handlers.balancing_handler`)."""

from cggm_seg.handlers.balancing_handler import ADAPTIVE_OPTIMIZERS, BalancingHandler, HeadBalancingHandler

__all__ = ["ADAPTIVE_OPTIMIZERS", "BalancingHandler", "HeadBalancingHandler"]
