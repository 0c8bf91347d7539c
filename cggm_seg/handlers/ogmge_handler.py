"""``OGMGEHandler``: the balancing handler with an :class:`~cggm_seg.balancing.OGMGE`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from cggm_seg.balancing import OGMGE, HeadOptions
from cggm_seg.handlers.balancing_handler import BalancingHandler

__all__ = ["OGMGEHandler"]


class OGMGEHandler(BalancingHandler):
    """``BalancingHandler(OGMGE(...), heads)`` under one name, with the settings as keywords.

    Args:
        heads, branches, head_optimizer, loss_function, network, history_size, name: as for
            :class:`~cggm_seg.handlers.BalancingHandler`.
        head_lr: learning rate of the heads' default optimizer. Defaults to 1e-3.
        score: the heads' score. Defaults to ``"region_true_class_probability"``.
        sublattice: train the segmentation heads on one voxel in 8 of their grid per step
            (:class:`~cggm_seg.balancing.HeadOptions`). Defaults to False.
        settings: ``alpha``, ``continuous``, ``noise``, ``start_epoch``, ``end_epoch``, ``seed``,
            ``magnitude``, ``observe_every``, as for :class:`~cggm_seg.balancing.OGMGE`.
    """

    def __init__(
        self,
        heads: Mapping[str, nn.Module] | nn.ModuleDict,
        branches: Mapping[str, Any] | None = None,
        head_optimizer: torch.optim.Optimizer | None = None,
        head_lr: float = 1e-3,
        loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        score: str | Callable = "region_true_class_probability",
        sublattice: bool = False,
        network: nn.Module | None = None,
        history_size: int = 100_000,
        name: str | None = None,
        **settings: Any,
    ) -> None:
        method = OGMGE(**settings, head_options=HeadOptions(score=score, lr=head_lr, sublattice=sublattice))
        super().__init__(method, heads, branches, loss_function, head_optimizer, network, history_size, name)
