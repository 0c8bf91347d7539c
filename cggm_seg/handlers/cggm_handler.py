"""MONAI handler that balances a multi-encoder network's training with CGGM (METHOD.md 1.3)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cggm_seg.balancing import CGGM, BalanceTracker, HeadTrainer
from cggm_seg.balancing.cggm import check_settings
from cggm_seg.handlers.base import HeadBalancingHandler

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["CGGMHandler"]


class CGGMHandler(HeadBalancingHandler):
    """Classifier-guided gradient modulation for any MONAI ``SupervisedTrainer``.

    Attach it to a trainer whose network has one encoder per modality. Each iteration:

    - ``FORWARD_COMPLETED``: forward hooks have kept each branch's output and the final layer's input;
    - ``BACKWARD_COMPLETED`` (all of it after the network's backward, when its activations are
      freed, so that none of it adds to the step's peak memory): the light heads train one step on
      the branch features the forward captured (detached) with their own optimizer, and their
      scores update the balance tracker (B); the gradient of ``lam * L_gm`` is added to the final
      layer's gradient (scaled as the trainer scaled the loss: GradScaler, ``1 /
      accumulation_steps``), the same gradient as back-propagating ``loss + lam * L_gm``; then,
      only when an optimizer step follows (see gradient accumulation), under AMP the gradients are
      unscaled, and each branch's gradients (``magnitude="grad"``) or learning rates (``"lr"``)
      are scaled by B_i;
    - ``MODEL_COMPLETED``: learning rates scaled in ``lr`` mode are restored; the iteration's
      statistics are put on ``engine.state`` and appended to :attr:`history`.

    Nothing here is specific to cggm_seg's networks: name the branches (module names or modules)
    and the fused final layer; the heads only need a ``final`` layer shaped like the fused one.

    Args:
        heads: modality -> light head (``nn.ModuleDict`` or dict), e.g. from
            :func:`cggm_seg.networks.make_heads`; moved to the network's device when the run starts.
        branches: modality -> encoder module name(s) or module(s); ``None`` asks
            ``network.branch_names()``.
        final: name (or module) of the network's final layer. Defaults to ``"final"``.
        head_optimizer: the heads' optimizer; ``None`` builds ``Adam(heads, lr=head_lr)`` when the run starts.
        head_lr: learning rate of the default head optimizer. Defaults to 1e-3.
        loss_function: the fused task loss ``(logits, target) -> scalar`` that the direction term
            re-evaluates and the heads train with; ``None`` takes ``engine.loss_function``.
        score: the heads' task score eps (see :data:`cggm_seg.balancing.SCORES`). Defaults to
            ``"soft_dice"`` (mean soft Dice over the region channels).
        score_at: where a coarse head (``level > 0``) is scored: ``"head"`` (default, its own
            resolution, pooled target) or ``"full"`` (its logits upsampled to the target).
        sublattice: train and score segmentation heads (any ``level``) on one voxel in 8 of their
            output grid per step, a different sub-lattice each step
            (:class:`~cggm_seg.balancing.HeadTrainer`): the same heads for a fraction of their step
            (``docs/benchmarks.md``). Defaults to False.
        rho, ema, tau, b_min, b_max, renormalize, warmup, preset, window, z: the
            :class:`BalanceTracker` settings (``None`` keeps the preset's default; the default
            preset ``"trend"`` measures each head's rate of improvement as the slope of its scores
            over the last ``window`` = 100 iterations and renormalises B to mean 1).
        magnitude: ``"grad"`` (scale gradients; for SGD), ``"lr"`` (scale the branch learning
            rates; for Adam/AdamW, needs an optimizer built with
            :func:`cggm_seg.balancing.branch_param_groups`) or ``"off"``. Defaults to ``"grad"``.
        direction: ``"gradient"`` (default), ``"weights"`` or ``"off"``.
        lam: weight lambda of the direction loss. Defaults to 0.1 (the paper's BraTS value).
        observe_every: the heads train, B is recomputed and the direction term is added every
            ``observe_every``-th iteration (the first included); B scales every step. The
            tracker's ``window`` and ``warmup`` stay in iterations (its window then holds
            ``window / observe_every`` scores), and the direction term's average weight is
            ``lam / observe_every``. Defaults to 1 (every iteration). A cost knob: the heads' step
            and the direction term are what CGGM costs.
        network: the network to balance; ``None`` takes ``engine.network`` when the run starts.
        history_size: iterations kept in :attr:`history` (for the run's plot). Defaults to 100000.
        name: logger name; ``None`` uses ``engine.logger``.

    Attributes:
        history: per-iteration dicts ``{"iteration", "epoch", "eps_<m>", "d_<m>", "B_<m>",
            "cos_<m>", "head_loss_<m>", "L_gm"}``.
        stat_names: the names put on ``engine.state`` each iteration (give them to
            ``StatsHandler(state_attributes=...)``, TensorBoard or MLflow handlers).

    Raises:
        ValueError: at construction (when a bundle config is parsed), for an unknown magnitude,
            direction, score or preset, or a setting out of range (rho <= 0, lam < 0,
            observe_every < 1, ...); when
            the run starts, for branches, heads and tracker that do not cover the same
            modalities, heads whose final layer is shaped unlike the network's, or an engine
            without a network.
    """

    method_key = "cggm"

    def __init__(
        self,
        heads: Mapping[str, nn.Module] | nn.ModuleDict,
        branches: Mapping[str, Any] | None = None,
        final: str | nn.Module = "final",
        head_optimizer: torch.optim.Optimizer | None = None,
        head_lr: float = 1e-3,
        loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        score: str | Callable = "soft_dice",
        score_at: str = "head",
        sublattice: bool = False,
        rho: float = 1.0,
        ema: float | None = None,
        tau: float | None = None,
        b_min: float | None = None,
        b_max: float | None = None,
        renormalize: bool | None = None,
        warmup: int | None = None,
        preset: str = "trend",
        window: int | None = None,
        z: float | None = None,
        magnitude: str = "grad",
        direction: str = "gradient",
        lam: float = 0.1,
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
        self.final = final
        # Built now so that bad settings fail when the config is parsed, not at the first iteration.
        self.tracker = BalanceTracker(
            self.modalities,
            rho=rho,
            ema=ema,
            tau=tau,
            b_min=b_min,
            b_max=b_max,
            renormalize=renormalize,
            warmup=warmup,
            preset=preset,
            history_size=0,
            window=window,
            z=z,
            observe_every=observe_every,
        )
        check_settings(magnitude, direction, lam)  # a bad config fails when it is parsed
        self.settings = {"magnitude": magnitude, "direction": direction, "lam": lam}

    @property
    def observe_every(self) -> int:
        """Iterations from one observation to the next (the tracker is built for it)."""
        return self.tracker.observe_every

    @property
    def stat_names(self) -> list[str]:
        """The names put on ``engine.state`` each iteration."""
        names = [f"{s}_{m}" for s in ("eps", "d", "B", "head_loss") for m in self.modalities]
        if self.settings["direction"] != "off":
            names += [f"cos_{m}" for m in self.modalities]
        return names + ["L_gm"]

    def _build(self, network: nn.Module, heads: HeadTrainer, loss_fn: Callable) -> CGGM:
        self.logger.info(
            f"CGGM on {list(self.modalities)}: {self.settings}, "
            f"rho={self.tracker.rho}, preset={self.tracker.preset}, observe_every={self.observe_every}"
        )
        return CGGM(
            network,
            heads,
            loss_fn,
            branches=self.branches,
            final=self.final,
            tracker=self.tracker,
            observe_every=self.observe_every,
            **self.settings,
        )

    def _observe(self, engine: Engine) -> None:
        output = engine.state.output
        self.method.training_loss(output["loss"], output["label"])

    @property
    def adds_to_gradients(self) -> bool:
        """The direction term adds its gradient after the backward (not with direction ``off``,
        nor on the iterations between two observations)."""
        return self.settings["direction"] != "off" and (self.method is None or self.method.due)

    def _after_backward(self, engine: Engine) -> bool:
        scale = 1.0
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None and scaler.is_enabled():
            scale = float(scaler.get_scale())  # the trainer back-propagated scaler.scale(loss)
        accumulation = int(getattr(engine, "accumulation_steps", 1) or 1)
        if accumulation > 1:
            scale /= accumulation  # ... of loss / accumulation_steps
        return self.method.direction_backward(scale)

    def _modulate(self, engine: Engine) -> None:
        self.method.apply_magnitude(engine.optimizer)

    def _after_step(self, engine: Engine) -> None:
        self.method.restore_magnitude()
