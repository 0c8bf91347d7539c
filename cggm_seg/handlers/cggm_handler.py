"""``CGGMHandler``: :class:`~cggm_seg.handlers.BalancingHandler` with a :class:`~cggm_seg.balancing.CGGM`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from cggm_seg.balancing import CGGM, BalanceTracker, HeadOptions
from cggm_seg.handlers.balancing_handler import BalancingHandler

__all__ = ["CGGMHandler"]


class CGGMHandler(BalancingHandler):
    """``BalancingHandler(CGGM(...), heads)`` under one name, with the settings as keywords.

    Args:
        heads, branches, head_optimizer, loss_function, network, history_size, name: as for
            :class:`~cggm_seg.handlers.BalancingHandler`.
        final: name (or module) of the network's final layer. Defaults to ``"final"``.
        head_lr: learning rate of the heads' default optimizer. Defaults to 1e-3.
        score: the heads' score. Defaults to ``"soft_dice"``.
        tracker: keyword settings of the :class:`~cggm_seg.balancing.BalanceTracker` (``rho``,
            ``preset``, ``window``, ``z``, ``ema``, ``tau``, ``b_min``, ``b_max``,
            ``renormalize``, ``warmup``); its modalities are the heads'.
        magnitude, direction, lam: as for :class:`~cggm_seg.balancing.CGGM`.
    """

    def __init__(
        self,
        heads: Mapping[str, nn.Module] | nn.ModuleDict,
        branches: Mapping[str, Any] | None = None,
        final: str | nn.Module = "final",
        head_optimizer: torch.optim.Optimizer | None = None,
        head_lr: float = 1e-3,
        loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        score: str | Callable = "soft_dice",
        magnitude: str = "grad",
        direction: str = "gradient",
        lam: float = 0.1,
        network: nn.Module | None = None,
        history_size: int = 100_000,
        name: str | None = None,
        **tracker: Any,
    ) -> None:
        tracker = BalanceTracker(tuple(dict(heads.items())), history_size=0, **tracker)
        method = CGGM(tracker, magnitude, direction, lam, final, HeadOptions(score=score, lr=head_lr))
        super().__init__(method, heads, branches, loss_function, head_optimizer, network, history_size, name)

    @property
    def tracker(self) -> BalanceTracker:
        """The method's balance tracker."""
        return self.method.tracker
