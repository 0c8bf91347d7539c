"""What the CGGM and OGM-GE handlers share: the light heads, their optimizer, events, stats, state."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn

from cggm_seg.balancing import HeadTrainer, get_score
from cggm_seg.balancing.heads import check_score_at, check_sublattice_heads
from cggm_seg.handlers.utils import (
    engine_device,
    engine_network,
    is_finite,
    publish_stats,
    step_follows,
    unscale_gradients,
)

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["HeadBalancingHandler", "ADAPTIVE_OPTIMIZERS"]

_NO_VERDICT = object()  # no NonFiniteGuard ran at this step

#: optimizers that divide each step by a running gradient scale, so that a scaled gradient moves the
#: weights by (almost) the same amount: magnitude ``"grad"`` is then a no-op and ``"lr"`` is needed
ADAPTIVE_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.Adagrad,
    torch.optim.Adadelta,
    torch.optim.RMSprop,
)


class HeadBalancingHandler:
    """Base of the handlers that observe each modality through a light head and modulate its branch.

    Subclasses build their method in :meth:`_build` and implement :meth:`_observe` (the heads'
    step, at ``BACKWARD_COMPLETED``, once the network's gradients are known to be usable),
    :meth:`_after_backward` (right after it: may add to the gradients, and says whether that was
    finite), :meth:`_modulate` (then, only when an optimizer step follows, after AMP unscaling),
    :meth:`_after_step`, :attr:`stats` and :attr:`method`. ``LOSS_COMPLETED`` only notes whether
    the loss is finite.

    Args:
        heads: modality -> light head with a ``final`` layer (moved to the network's device at start).
        branches: modality -> encoder module name(s) or module(s); ``None`` asks ``network.branch_names()``.
        head_optimizer: the heads' optimizer; ``None`` builds ``Adam(heads, lr=head_lr)`` when the run starts.
        head_lr: learning rate of the default head optimizer.
        loss_function: the task loss ``(logits, target) -> scalar`` of the heads (and CGGM's
            direction term); ``None`` takes ``engine.loss_function``.
        score: the heads' score (name in :data:`cggm_seg.balancing.SCORES` or a callable).
        score_at: where a coarse head (``level > 0``) is scored: ``"head"`` (default, its own
            resolution, pooled target) or ``"full"`` (its logits upsampled to the target).
        sublattice: train and score segmentation heads (any ``level``) on one voxel in 8 of their
            output grid per step, a different sub-lattice each step
            (:class:`~cggm_seg.balancing.HeadTrainer`): the same heads for a fraction of their step
            (``docs/benchmarks.md``). Defaults to False.
        network: the network to balance; ``None`` takes ``engine.network`` when the run starts.
        history_size: iterations kept in :attr:`history`.
        name: logger name; ``None`` uses ``engine.logger``.
    """

    #: key of the method's own state in :meth:`state_dict`
    method_key = "method"

    @property
    def adds_to_gradients(self) -> bool:
        """Whether :meth:`_after_backward` may add to the network's gradients (then the heads'
        step is snapshotted at this iteration, to be undone if what was added is not finite)."""
        return False

    def __init__(
        self,
        heads: Mapping[str, nn.Module] | nn.ModuleDict,
        branches: Mapping[str, Any] | None,
        head_optimizer: torch.optim.Optimizer | None,
        head_lr: float,
        loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
        score: str | Callable,
        network: nn.Module | None,
        history_size: int,
        name: str | None,
        score_at: str = "head",
        sublattice: bool = False,
    ) -> None:
        get_score(score)  # an unknown score name fails when the config is parsed, not at the first step
        check_score_at(score_at)  # fails when the config is parsed, not when the run starts
        self.score_at = score_at
        if not (head_lr > 0):
            raise ValueError(f"head_lr must be > 0, got {head_lr}.")
        self.heads = heads if isinstance(heads, nn.ModuleDict) else nn.ModuleDict(dict(heads))
        if not isinstance(sublattice, bool):
            raise ValueError(f"sublattice must be True or False, got {sublattice!r}.")
        self.sublattice = sublattice
        if self.sublattice:
            # fails when the config is parsed, not when the run starts
            check_sublattice_heads(self.heads, score_at)
        self.modalities = tuple(self.heads.keys())
        self.branches = branches
        self.head_optimizer = head_optimizer
        self.head_lr = head_lr
        self.loss_function = loss_function
        self.score = score
        self.network = network
        self.history_size = history_size
        self.history: list[dict[str, float]] = []
        self.logger = logging.getLogger(name)
        self._name = name
        self.method: Any = None
        self.head_trainer: HeadTrainer | None = None
        self._pending_state: Mapping[str, Any] | None = None
        self._warned_nonfinite = False
        self._skip = False  # this iteration is not finite: no head, tracker or branch update
        self._before: dict[str, Any] = {}

    # -- to implement ------------------------------------------------------------------------------
    def _build(self, network: nn.Module, heads: HeadTrainer, loss_fn: Callable) -> Any:
        raise NotImplementedError

    def _observe(self, engine: Engine) -> None:
        raise NotImplementedError

    def _modulate(self, engine: Engine) -> None:
        raise NotImplementedError

    def _after_backward(self, engine: Engine) -> bool:
        """Called at BACKWARD_COMPLETED right after :meth:`_observe`; returns whether what it added
        to the network's gradients is finite."""
        return True

    def _after_step(self, engine: Engine) -> None:
        """Called at MODEL_COMPLETED, after the optimizer step."""

    @property
    def stats(self) -> dict[str, float]:
        return dict(self.method.stats)

    # -- shared ------------------------------------------------------------------------------------
    def attach(self, engine: Engine) -> None:
        """Register the iteration events; the heads' trainer and the method are built when the run
        starts (a ``SupervisedTrainer`` attaches its handlers before it sets its network)."""
        from monai.engines.utils import IterationEvents

        if self._name is None:
            self.logger = engine.logger
        if not engine.has_event_handler(self.build, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self.build)
            engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self.loss_completed)
            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self.backward_completed)
            engine.add_event_handler(IterationEvents.MODEL_COMPLETED, self.model_completed)

    def build(self, engine: Engine) -> None:
        """Build the heads' trainer and the method on ``engine``'s network (once per handler).

        Raises:
            ValueError: no network or loss function, or heads / branches that do not match.
        """
        if self.method is not None:
            return
        network = engine_network(engine, self.network)
        self.heads.to(engine_device(network))
        if self.head_optimizer is None:
            self.head_optimizer = torch.optim.Adam(self.heads.parameters(), lr=self.head_lr)
        loss_fn = self.loss_function or getattr(engine, "loss_function", None)
        if loss_fn is None:
            raise ValueError("no loss function: pass loss_function= or use an engine with `loss_function`.")
        heads = self.head_trainer = HeadTrainer(
            self.heads,
            loss_fn,
            self.head_optimizer,
            score_fn=self.score,
            score_at=self.score_at,
            sublattice=self.sublattice,
        )
        if self.sublattice:
            self.logger.info(
                "sublattice: the heads train and are scored on one voxel in 8 of their grid per step"
            )
        self._check_optimizer(getattr(engine, "optimizer", None))
        self.method = self._build(network, heads, loss_fn)
        if self._pending_state is not None:
            self.load_state_dict(self._pending_state)

    def _check_optimizer(self, optimizer: Any) -> None:
        """Warn (once, when the run starts) where gradient scaling cannot act: magnitude ``"grad"``
        with an adaptive optimizer, which normalises the gradient's scale away."""
        settings = getattr(self, "settings", {})
        if settings.get("magnitude") == "grad" and isinstance(optimizer, ADAPTIVE_OPTIMIZERS):
            import warnings

            message = (
                f"{type(self).__name__}: magnitude='grad' scales the branches' gradients, but "
                f"{type(optimizer).__name__} divides each step by a running gradient scale, so the scaling "
                "has almost no effect (a silent no-op). Use magnitude='lr' with an optimizer built by "
                "cggm_seg.balancing.branch_param_groups(network, branches), or SGD."
            )
            warnings.warn(message, UserWarning, stacklevel=2)
            self.logger.warning(message)

    def _check_finite(self, engine: Engine, stats: Mapping[str, float]) -> None:
        """Warn once when a head's statistics turn non-finite (its weights are NaN or inf: the
        method then acts as if that head had learned nothing, silently)."""
        if self._warned_nonfinite:
            return
        bad = [k for k, v in stats.items() if not math.isfinite(float(v))]
        if not bad:
            return
        broken = [
            m for m in self.modalities if any(not torch.isfinite(p).all() for p in self.heads[m].parameters())
        ]
        import warnings

        self._warned_nonfinite = True
        message = (
            f"{type(self).__name__}: at iteration {engine.state.iteration} the heads "
            f"{broken or bad} give non-finite {'weights' if broken else 'values'}: their scores "
            "carry no signal, and the balancing acts as if they learned nothing. Lower head_lr "
            f"(now {self.head_lr}) or check the loss of the heads."
        )
        warnings.warn(message, UserWarning, stacklevel=2)
        self.logger.warning(message)

    def loss_completed(self, engine: Engine) -> None:
        self._skip = not is_finite(engine.state.output["loss"])

    def backward_completed(self, engine: Engine) -> None:
        """The heads' step, the method's coefficients and what it adds to the gradients, then (when
        an optimizer step follows) the modulation: all after the network's backward, so that the
        heads' graphs are built once the network's activations are freed and add nothing to the
        step's peak memory (the features they train on were captured, detached, in the forward)."""
        if self._skip or self._gradients_not_finite(engine):
            # A non-finite loss, or gradients the network will not step on (NonFiniteGuard drops
            # them): neither do the heads nor the method learn from this batch.
            self._skip = True
            self._discard(engine)
            return
        self._before = self._light_state() if self.adds_to_gradients else {}
        self._observe(engine)
        if not self._after_backward(engine):
            # What the method added to the gradients is not finite (NaN heads, through CGGM's
            # direction term): the step is dropped where a NonFiniteGuard passed the gradients
            # before (it counts the verdict when the iteration completes), and the heads' and the
            # method's step is undone. Said once.
            if getattr(engine.state, "nonfinite_step", _NO_VERDICT) is None:
                self._drop_gradients(engine)
            self._check_finite(engine, self.stats)
            self._restore_light_state(self._before)
            self._skip = True
            return
        if step_follows(engine):
            unscale_gradients(engine)
            self._modulate(engine)

    def _discard(self, engine: Engine) -> None:
        """Drop what the forward captured for a step that is skipped."""
        if self.method is not None:
            self.method.observer.clear()

    def _drop_gradients(self, engine: Engine) -> None:
        """Skip this step as :class:`~cggm_seg.handlers.NonFiniteGuard` does: every gradient to
        ``None`` and the verdict ``"gradients"``. Under AMP the GradScaler skips it itself."""
        if getattr(engine, "amp", False):
            return
        for p in engine_network(engine, self.network).parameters():
            p.grad = None
        engine.state.nonfinite_step = "gradients"

    def _gradients_not_finite(self, engine: Engine) -> bool:
        """This step's network gradients are not finite: the verdict of a :class:`NonFiniteGuard`
        attached before this handler, or (without one, and not under AMP, whose scaler skips such
        steps itself) this handler's own check."""
        verdict = getattr(engine.state, "nonfinite_step", _NO_VERDICT)
        if verdict is not _NO_VERDICT:
            return verdict == "gradients"
        if getattr(engine, "amp", False):
            return False
        network = engine_network(engine, self.network)
        return not is_finite([p.grad for p in network.parameters() if p.grad is not None])

    def _light_state(self) -> dict[str, Any]:
        """A copy of what the loss event changes (heads, their optimizer, the method), to undo a
        step whose gradients turn out not finite; the heads are a few thousand numbers."""
        import copy

        return {
            "heads": {k: v.clone() for k, v in self.heads.state_dict().items()},
            "head_optimizer": copy.deepcopy(self.head_optimizer.state_dict()),
            "method": copy.deepcopy(self.method.state_dict()),
            "head_steps": self.head_trainer.steps,
        }

    def _restore_light_state(self, state: Mapping[str, Any]) -> None:
        self.heads.load_state_dict(state["heads"])
        self.head_optimizer.load_state_dict(state["head_optimizer"])
        self.method.load_state_dict(state["method"])
        self.head_trainer.steps = state["head_steps"]

    def model_completed(self, engine: Engine) -> None:
        if self._skip:
            return
        self._after_step(engine)
        stats = self.stats
        self._check_finite(engine, stats)
        publish_stats(engine, stats)
        if self.history_size:
            self.history.append({"iteration": engine.state.iteration, "epoch": engine.state.epoch, **stats})
            del self.history[: -self.history_size]

    def iteration_output(self, output: Any, loss_name: str = "train_loss") -> dict[str, float]:
        """This iteration's loss and balancing statistics, for iteration-level logging.

        Give it as the ``output_transform`` of ``TensorBoardStatsHandler`` or ``MLFlowHandler`` with
        ``iteration_log=True``: they then write one value of every statistic (``B_<m>``, ``eps_<m>``,
        ``cos_<m>``, ...) per iteration, where ``state_attributes`` writes one per epoch::

            TensorBoardStatsHandler(log_dir, iteration_log=True, output_transform=handler.iteration_output)

        Args:
            output: the trainer's ``engine.state.output`` (a dict, or the decollated list of dicts).
            loss_name: the name of the loss value. Defaults to ``"train_loss"``.
        """
        from monai.handlers import from_engine

        values = {loss_name: float(from_engine(["loss"], first=True)(output))}
        if self.method is not None:
            values.update({k: float(v) for k, v in self.stats.items()})
        return values

    def state_dict(self) -> dict[str, Any]:
        """Heads, their optimizer, the method's state and the history (tensors and numbers only).

        Raises:
            RuntimeError: the method is not built yet (the run has not started).
        """
        if self.method is None:
            raise RuntimeError(f"the {type(self).__name__} has not been built yet: run the trainer first.")
        return {
            "heads": self.heads.state_dict(),
            "head_optimizer": self.head_optimizer.state_dict(),
            self.method_key: self.method.state_dict(),
            "head_steps": self.head_trainer.steps,
            "history": list(self.history),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; before the method is built it is kept and applied then."""
        if self.method is None:
            self._pending_state = state
            return
        self._pending_state = None
        self.heads.load_state_dict(state["heads"])
        self.head_optimizer.load_state_dict(state["head_optimizer"])
        self.method.load_state_dict(state[self.method_key])
        self.head_trainer.steps = int(state.get("head_steps", 0))  # 0 for checkpoints from before it
        self.history = list(state.get("history", []))
