"""Former home of the balancing handler's base class (re-exported from :mod:`cggm_seg.handlers.balancing`)."""

from cggm_seg.handlers.balancing import ADAPTIVE_OPTIMIZERS, BalancingHandler, HeadBalancingHandler

__all__ = ["ADAPTIVE_OPTIMIZERS", "BalancingHandler", "HeadBalancingHandler"]
