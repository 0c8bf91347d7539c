"""MONAI handler for the joint-training baseline: the light heads observe, nothing is modulated."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cggm_seg.balancing import HeadMonitor, HeadTrainer
from cggm_seg.handlers.base import HeadBalancingHandler

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["HeadMonitorHandler"]


class HeadMonitorHandler(HeadBalancingHandler):
    """Plain joint training, observed through the same light heads as CGGM and OGM-GE.

    At ``BACKWARD_COMPLETED`` (after the network's backward) the heads train one step on the
    branch features the forward captured (detached), and their scores ``eps_<m>`` (and
    ``head_loss_<m>``) go on ``engine.state`` and into :attr:`history`;
    gradients and learning rates are left alone. Use it for the ``joint`` baseline, so that each
    modality head's Dice can be compared across methods.

    Args:
        heads: modality -> light head with a ``final`` layer (moved to the network's device at start).
        branches: modality -> encoder module name(s) or module(s); ``None`` asks ``network.branch_names()``.
        head_optimizer: the heads' optimizer; ``None`` builds ``Adam(heads, lr=head_lr)`` when the run starts.
        head_lr: learning rate of the default head optimizer. Defaults to 1e-3.
        loss_function: the heads' loss; ``None`` takes ``engine.loss_function``.
        score: the heads' score. Defaults to ``"soft_dice"``.
        score_at: where a coarse head (``level > 0``) is scored: ``"head"`` (default, its own
            resolution, pooled target) or ``"full"`` (its logits upsampled to the target).
        sublattice: train and score segmentation heads (any ``level``) on one voxel in 8 of their
            output grid per step, a different sub-lattice each step
            (:class:`~cggm_seg.balancing.HeadTrainer`): the same heads for a fraction of their step
            (``docs/benchmarks.md``). Defaults to False.
        network: the network observed; ``None`` takes ``engine.network``.
        history_size: iterations kept in :attr:`history`. Defaults to 100000.
        name: logger name; ``None`` uses ``engine.logger``.
    """

    method_key = "monitor"

    def __init__(
        self,
        heads: Mapping[str, nn.Module] | nn.ModuleDict,
        branches: Mapping[str, Any] | None = None,
        head_optimizer: torch.optim.Optimizer | None = None,
        head_lr: float = 1e-3,
        loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        score: str | Callable = "soft_dice",
        score_at: str = "head",
        sublattice: bool = False,
        network: nn.Module | None = None,
        history_size: int = 100_000,
        name: str | None = None,
    ) -> None:
        super().__init__(
            heads,
            branches,
            head_optimizer,
            head_lr,
            loss_function,
            score,
            network,
            history_size,
            name,
            score_at=score_at,
            sublattice=sublattice,
        )

    @property
    def stat_names(self) -> list[str]:
        """The names put on ``engine.state`` each iteration."""
        return [f"{s}_{m}" for s in ("eps", "head_loss") for m in self.modalities]

    def _build(self, network: nn.Module, heads: HeadTrainer, loss_fn: Callable) -> HeadMonitor:
        self.logger.info(f"joint training, heads observing {list(self.modalities)}")
        return HeadMonitor(network, heads, branches=self.branches)

    def _observe(self, engine: Engine) -> None:
        self.method.observe(engine.state.output["label"])

    def _modulate(self, engine: Engine) -> None:
        """Joint training: nothing to modulate."""
