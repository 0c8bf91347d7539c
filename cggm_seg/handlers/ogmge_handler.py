"""MONAI handler that balances a multi-encoder network's training with OGM-GE (METHOD.md 2.3)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cggm_seg.balancing import OGMGE, HeadTrainer
from cggm_seg.balancing.observer import check_observe_every
from cggm_seg.handlers.base import HeadBalancingHandler

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["OGMGEHandler"]


class OGMGEHandler(HeadBalancingHandler):
    """On-the-fly gradient modulation with generalisation enhancement for any ``SupervisedTrainer``.

    The modalities are observed through the same light heads as CGGM, so both methods see them
    alike. Each iteration:

    - ``BACKWARD_COMPLETED`` (after the network's backward, so that the heads' graphs add nothing to
      the step's peak memory): the heads train one step on the branch features the forward
      captured (detached); their scores s_m give the discrepancy ratios rho_m = s_m / mean_{k != m}
      s_k and the coefficients k_m; then, only when an optimizer step follows, under AMP the
      gradients are unscaled, and inside the epoch window every gradient of branch m becomes
      ``k_m * g + h`` with GE noise ``h ~ N(0, std(g)^2)`` per parameter tensor;
    - ``MODEL_COMPLETED``: ``s_<m>``, ``rho_<m>``, ``k_<m>``, ``head_loss_<m>`` go on
      ``engine.state`` and into :attr:`history`.

    Args:
        heads: modality -> light head with a ``final`` layer (moved to the network's device at start).
            For segmentation prefer full-resolution heads (``make_heads(..., level=0)``): OGM-GE
            reads the scores' levels, which half-resolution heads rank less faithfully
            (``docs/benchmarks.md``); the BraTS bundle does so, with ``sublattice=True`` and
            ``observe_every=4``.
        branches: modality -> encoder module name(s) or module(s); ``None`` asks ``network.branch_names()``.
        head_optimizer: the heads' optimizer; ``None`` builds ``Adam(heads, lr=head_lr)`` when the run starts.
        head_lr: learning rate of the default head optimizer. Defaults to 1e-3.
        loss_function: the heads' loss; ``None`` takes ``engine.loss_function``.
        score: the heads' score s_m, a true-class probability. Defaults to
            ``"region_true_class_probability"`` (segmentation); ``"true_class_probability"`` for
            classification.
        score_at: where a coarse head (``level > 0``) is scored: ``"head"`` (default, its own
            resolution, pooled target) or ``"full"`` (its logits upsampled to the target).
        sublattice: train and score segmentation heads (any ``level``) on one voxel in 8 of their
            output grid per step, a different sub-lattice each step
            (:class:`~cggm_seg.balancing.HeadTrainer`): the same heads for a fraction of their step
            (``docs/benchmarks.md``). Defaults to False.
        alpha: modulation strength. Defaults to 0.8.
        continuous: use ``1 - tanh(alpha * (rho - 1))`` instead of the paper's ``1 - tanh(alpha * rho)``.
        noise: add the GE noise (False: plain OGM). Defaults to True.
        start_epoch, end_epoch: the modulation window in 0-based epochs, ``[start, end)``;
            ``end_epoch=None`` for no end. Defaults to 0 and 50 (the official 0-50 of 100 epochs).
        seed: seed of the GE noise (give one under DDP so that all ranks add the same noise).
        magnitude: ``"grad"`` (default; scale the branch gradients, for SGD) or ``"lr"`` (scale the
            branch learning rates for the step, for Adam/AdamW, which ignore a gradient's scale;
            needs an optimizer built with :func:`cggm_seg.balancing.branch_param_groups`).
        observe_every: the heads train and k is recomputed every ``observe_every``-th iteration
            (the first included); in between the last k modulates. Defaults to 1 (every iteration).
        network: the network to balance; ``None`` takes ``engine.network``.
        history_size: iterations kept in :attr:`history`. Defaults to 100000.
        name: logger name; ``None`` uses ``engine.logger``.

    Raises:
        ValueError: alpha < 0, an empty epoch window, an unknown magnitude or score (at
            construction); when the run starts, heads and branches of different modalities.
    """

    method_key = "ogmge"

    def __init__(
        self,
        heads: Mapping[str, nn.Module] | nn.ModuleDict,
        branches: Mapping[str, Any] | None = None,
        head_optimizer: torch.optim.Optimizer | None = None,
        head_lr: float = 1e-3,
        loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        score: str | Callable = "region_true_class_probability",
        score_at: str = "head",
        sublattice: bool = False,
        alpha: float = 0.8,
        continuous: bool = False,
        noise: bool = True,
        start_epoch: int = 0,
        end_epoch: int | None = 50,
        seed: int | None = None,
        magnitude: str = "grad",
        observe_every: int = 1,
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
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}.")
        if end_epoch is not None and end_epoch <= start_epoch:
            raise ValueError(f"the epoch window [{start_epoch}, {end_epoch}) is empty.")
        if magnitude not in ("grad", "lr"):
            raise ValueError(f"magnitude must be 'grad' or 'lr', got {magnitude!r}.")
        check_observe_every(observe_every)
        self.settings = {
            "magnitude": magnitude,
            "alpha": alpha,
            "continuous": continuous,
            "noise": noise,
            "start_epoch": start_epoch,
            "end_epoch": end_epoch,
            "seed": seed,
            "observe_every": observe_every,
        }

    @property
    def observe_every(self) -> int:
        """Iterations from one observation to the next."""
        return int(self.settings["observe_every"])

    @property
    def stat_names(self) -> list[str]:
        """The names put on ``engine.state`` each iteration."""
        return [f"{s}_{m}" for s in ("s", "rho", "k", "head_loss") for m in self.modalities]

    def _build(self, network: nn.Module, heads: HeadTrainer, loss_fn: Callable) -> OGMGE:
        self.check_distributed_seed()
        self.logger.info(f"OGM-GE on {list(self.modalities)}: {self.settings}")
        return OGMGE(network, heads, branches=self.branches, **self.settings)

    def check_distributed_seed(self) -> None:
        """Raise where GE noise would differ between DDP ranks (noise on, no seed, several ranks)."""
        if self.settings.get("noise") and self.settings.get("seed") is None:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                raise ValueError(
                    "OGM-GE's noise under DistributedDataParallel needs a seed: with seed=None each of the "
                    f"{dist.get_world_size()} ranks adds different noise to its copy of the weights, and "
                    "the copies drift apart. Give OGMGEHandler(seed=...) (the bundles pass @seed)."
                )

    def _observe(self, engine: Engine) -> None:
        self.method.observe(engine.state.output["label"])

    def _modulate(self, engine: Engine) -> None:
        self.method.apply_magnitude(engine.state.epoch - 1, engine.optimizer)  # Ignite counts epochs from 1

    def _after_step(self, engine: Engine) -> None:
        self.method.restore_magnitude()
