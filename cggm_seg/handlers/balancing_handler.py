"""The MONAI handler that runs any balancing method on a ``SupervisedTrainer``'s iteration events."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn

from cggm_seg.balancing.branches import branch_parameters
from cggm_seg.balancing.head_trainer import HeadTrainer, check_sublattice_heads
from cggm_seg.balancing.magnitude import ADAPTIVE_OPTIMIZERS, check_branch_groups
from cggm_seg.balancing.method import BalancingMethod
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

__all__ = ["BalancingHandler", "HeadBalancingHandler", "ADAPTIVE_OPTIMIZERS"]

_NO_VERDICT = object()  # no NonFiniteGuard ran at this step


class BalancingHandler:
    """Balances a multimodal network's training with a :class:`~cggm_seg.balancing.BalancingMethod`.

    Attach it to a ``SupervisedTrainer`` whose network has one encoder per modality. When the run
    starts the method is bound to the trainer's network and the light heads
    (:meth:`~cggm_seg.balancing.BalancingMethod.bind`); then each iteration:

    - ``LOSS_COMPLETED``: notes whether the loss is finite;
    - ``BACKWARD_COMPLETED`` (after the network's backward, when its activations are freed, so that
      the heads' graphs add nothing to the step's peak memory): the method observes (the heads
      train one step on the branch features the forward captured, detached), then adds to the
      gradients what it adds (scaled as the trainer scaled the loss: GradScaler,
      ``1 / accumulation_steps``), then, only when an optimizer step follows (gradient
      accumulation), under AMP the gradients are unscaled and the method scales each branch's
      gradients or learning rate;
    - ``MODEL_COMPLETED``: the method restores what it changed for the step; its statistics go on
      ``engine.state`` (:attr:`stat_names`) and into :attr:`history`.

    A step whose loss or gradients are not finite trains neither the heads nor the method; a step
    whose added gradient is not finite is dropped and the heads' and method's step undone.

    Args:
        method: the method, built from its settings (``CGGM(lam=0.1)``, ``OGMGE(alpha=0.8)``,
            ``HeadMonitor()``, ...); its ``head_options`` say how the heads are trained.
        heads: modality -> light head with a ``final`` layer (a dict or ``nn.ModuleDict``, e.g. from
            :func:`cggm_seg.networks.make_heads`); moved to the network's device at start.
        branches: modality -> encoder module name(s) or module(s); ``None`` asks
            ``network.branch_names()``.
        loss_function: the task loss ``(logits, target) -> scalar`` of the heads (and CGGM's
            direction term); ``None`` takes ``engine.loss_function``.
        head_optimizer: the heads' optimizer; ``None`` builds ``Adam(heads, lr=head_options.lr)``.
        network: the network to balance; ``None`` takes ``engine.network`` when the run starts.
        history_size: iterations kept in :attr:`history`. Defaults to 100000.
        name: logger name; ``None`` uses ``engine.logger``.

    Attributes:
        history: per-iteration dicts ``{"iteration", "epoch", <the method's stats>}``.

    Raises:
        ValueError: at construction (when a bundle config is parsed), a method that is not a
            :class:`~cggm_seg.balancing.BalancingMethod` or heads it cannot train; when the run
            starts, heads and branches of different modalities, an engine without a network or
            loss function, or an optimizer the method's magnitude mode cannot act through.
    """

    def __init__(
        self,
        method: BalancingMethod,
        heads: Mapping[str, nn.Module] | nn.ModuleDict,
        branches: Mapping[str, Any] | None = None,
        loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        head_optimizer: torch.optim.Optimizer | None = None,
        network: nn.Module | None = None,
        history_size: int = 100_000,
        name: str | None = None,
    ) -> None:
        if not isinstance(method, BalancingMethod):
            raise ValueError(
                f"method must be a BalancingMethod (CGGM(...), OGMGE(...), HeadMonitor(...)), got {method!r}."
            )
        if method.observer is not None:
            raise ValueError(f"this {type(method).__name__} is bound to a network already: give a new one.")
        if heads is None:
            raise ValueError(
                f"{type(method).__name__} observes the modalities through light heads: give `heads`."
            )
        self.method = method
        self.heads = heads if isinstance(heads, nn.ModuleDict) else nn.ModuleDict(dict(heads))
        if method.head_options.sublattice:
            check_sublattice_heads(self.heads)  # fails when the config is parsed, not when the run starts
        self.modalities = tuple(self.heads.keys())
        self.branches = branches
        self.head_optimizer = head_optimizer
        self.loss_function = loss_function
        self.network = network
        self.history_size = history_size
        self.history: list[dict[str, float]] = []
        self.logger = logging.getLogger(name)
        self._name = name
        self.head_trainer: HeadTrainer | None = None
        self._built = False
        self._pending_state: Mapping[str, Any] | None = None
        self._warned_nonfinite = False
        self._skip = False  # this iteration is not finite: no head, tracker or branch update
        self._before: dict[str, Any] = {}

    @property
    def head_lr(self) -> float:
        """The learning rate of the heads' default optimizer."""
        return self.method.head_options.lr

    @property
    def method_key(self) -> str:
        """The key of the method's state in :meth:`state_dict`."""
        return self.method.state_key or self.method.name

    @property
    def stats(self) -> dict[str, float]:
        """The method's statistics of the last observation."""
        return dict(self.method.stats)

    @property
    def stat_names(self) -> list[str]:
        """The names put on ``engine.state`` each iteration (give them to
        ``StatsHandler(state_attributes=...)``, TensorBoard or MLflow handlers)."""
        return self.method.stat_names_for(self.modalities)

    # -- shared ------------------------------------------------------------------------------------
    def attach(self, engine: Engine) -> None:
        """Register the iteration events; the method is bound when the run starts (a
        ``SupervisedTrainer`` attaches its handlers before it sets its network and optimizer).

        Where the engine has its network and optimizer already, an optimizer that magnitude
        ``"lr"`` cannot act through is refused here.

        Raises:
            ValueError: magnitude ``"lr"`` and an optimizer without a param group per branch.
        """
        from monai.engines.utils import IterationEvents

        if self._name is None:
            self.logger = engine.logger
        optimizer = getattr(engine, "optimizer", None)
        network = self.network if self.network is not None else getattr(engine, "network", None)
        if self.method.magnitude.mode == "lr" and optimizer is not None and network is not None:
            check_branch_groups(optimizer, branch_parameters(network, self.branches))
        if not engine.has_event_handler(self.build, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self.build)
            engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self.loss_completed)
            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self.backward_completed)
            engine.add_event_handler(IterationEvents.MODEL_COMPLETED, self.model_completed)

    def build(self, engine: Engine) -> None:
        """Bind the method to ``engine``'s network and the heads (once per handler), and check the
        trainer's optimizer for the method's magnitude mode.

        Raises:
            ValueError: no network or loss function, heads / branches that do not match, or an
                optimizer the magnitude mode cannot act through (``"lr"`` without branch groups).
        """
        if self._built:
            return
        network = engine_network(engine, self.network)
        self.heads.to(engine_device(network))
        loss_fn = self.loss_function or getattr(engine, "loss_function", None)
        if loss_fn is None:
            raise ValueError("no loss function: pass loss_function= or use an engine with `loss_function`.")
        options = self.method.head_options
        self.head_trainer = options.trainer(
            self.heads, loss_fn, self.method.default_score, optimizer=self.head_optimizer
        )
        self.head_optimizer = self.head_trainer.optimizer
        if options.sublattice:
            self.logger.info(
                "sublattice: the heads train and are scored on one voxel in 8 of their grid per step"
            )
        self.method.bind(network, self.head_trainer, branches=self.branches, loss_fn=loss_fn)
        self._built = True
        self.method.check_optimizer(getattr(engine, "optimizer", None), self.logger)
        self.logger.info(f"{type(self.method).__name__} on {list(self.modalities)}: {self.method.settings}")
        if self._pending_state is not None:
            self.load_state_dict(self._pending_state)

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
            "carry no signal, and the balancing acts as if they learned nothing. Lower the heads' lr "
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
        self._before = self._light_state() if self.method.adds_to_gradients else {}
        self.method.observe(engine.state.output["label"])
        if not self.method.after_backward(_loss_scale(engine)):
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
            self.method.apply_magnitude(engine.optimizer, engine.state.epoch - 1)  # Ignite counts from 1

    def _discard(self, engine: Engine) -> None:
        """Drop what the forward captured for a step that is skipped."""
        if self._built:
            self.method.discard()

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
        self.method.restore_magnitude()
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
        if self._built:
            values.update({k: float(v) for k, v in self.stats.items()})
        return values

    def state_dict(self) -> dict[str, Any]:
        """Heads, their optimizer, the method's state and the history (tensors and numbers only).

        Raises:
            RuntimeError: the method is not built yet (the run has not started).
        """
        if not self._built:
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
        if not self._built:
            self._pending_state = state
            return
        self._pending_state = None
        self.heads.load_state_dict(state["heads"])
        self.head_optimizer.load_state_dict(state["head_optimizer"])
        self.method.load_state_dict(state[self.method_key])
        self.head_trainer.steps = int(state.get("head_steps", 0))  # 0 for checkpoints from before it
        self.history = list(state.get("history", []))


def _loss_scale(engine: Engine) -> float:
    """The factor the trainer multiplied the loss by before its backward: the GradScaler's scale
    under AMP, divided by the gradient accumulation steps."""
    scale = 1.0
    scaler = getattr(engine, "scaler", None)
    if getattr(engine, "amp", False) and scaler is not None and scaler.is_enabled():
        scale = float(scaler.get_scale())  # the trainer back-propagated scaler.scale(loss)
    accumulation = int(getattr(engine, "accumulation_steps", 1) or 1)
    if accumulation > 1:
        scale /= accumulation  # ... of loss / accumulation_steps
    return scale


#: the handlers' former base class, for code that checks ``isinstance(handler, HeadBalancingHandler)``
HeadBalancingHandler = BalancingHandler
