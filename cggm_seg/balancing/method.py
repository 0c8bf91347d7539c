"""The interface every balancing method implements, and the registry of methods by name.

A method is built from its settings alone (so that a bundle builds it with ``_target_`` and a bad
setting fails when the config is parsed), then bound to a network and its light heads with
:meth:`BalancingMethod.bind`. One training iteration then calls, in this order::

    loss = loss_fn(model(x), y)          # forward: the method's hooks keep each branch's features
    loss.backward()
    method.observe(y)                    # the heads train one step on the detached features
    method.after_backward(scale)         # may add to the network's gradients (CGGM's direction term)
    method.apply_magnitude(optimizer, epoch)   # scale each branch's gradients or learning rate
    optimizer.step()
    method.restore_magnitude()           # put back what apply_magnitude changed

(:meth:`BalancingMethod.step` does the last four). :class:`cggm_seg.handlers.BalancingHandler`
runs the same sequence on MONAI's ``SupervisedTrainer`` events for any method. A new method is a
subclass in a file of its own plus one line in :data:`METHODS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from cggm_seg.balancing.branches import BranchSpec, branch_parameters
from cggm_seg.balancing.head_trainer import HeadOptions, HeadTrainer, as_head_trainer
from cggm_seg.balancing.magnitude import BranchMagnitude, optimizer_step
from cggm_seg.balancing.observer import HeadObserver

__all__ = ["BalancingMethod", "METHODS", "register_method", "get_method_class", "pick_method"]


class BalancingMethod:
    """Base of the balancing methods: built from settings, bound to a network, called per iteration.

    Subclasses set :attr:`name`, :attr:`default_score`, :attr:`stat_kinds` and
    :attr:`plot_panels`, implement :meth:`_observe` (turn the heads' step into the method's
    coefficients and :attr:`stats`), and where they act :meth:`after_backward` and
    :meth:`apply_magnitude`; :meth:`_bind` adds what they need from the network.

    Args:
        magnitude: how the method changes a branch's step (:mod:`cggm_seg.balancing.magnitude`):
            ``"grad"``, ``"lr"`` or ``"off"``.
        head_options: how the light heads are built and trained (:class:`HeadOptions`).

    Attributes:
        modalities: the branches' modalities (after :meth:`bind`).
        observer: the forward hooks and the heads (after :meth:`bind`).
        stats: the last observation's statistics as floats (``head_loss_<m>`` and the method's own).
    """

    #: name in :data:`METHODS` (and a bundle's ``methods`` block)
    name: ClassVar[str] = "method"
    #: key of the method's state in a handler's checkpoint (``None``: :attr:`name`)
    state_key: ClassVar[str | None] = None
    #: the heads' score when :attr:`HeadOptions.score` is ``None``
    default_score: ClassVar[str] = "soft_dice"
    #: per-modality statistics put on the engine's state each iteration, as ``<kind>_<modality>``
    stat_kinds: ClassVar[tuple[str, ...]] = ("head_loss",)
    #: ``(kind, title)`` of the panels of ``balance.png``
    plot_panels: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: magnitude modes the method accepts
    magnitudes: ClassVar[tuple[str, ...]] = ("grad", "lr", "off")

    def __new__(cls, *args: Any, **kwargs: Any) -> BalancingMethod:
        if (args and isinstance(args[0], nn.Module)) or "model" in kwargs:
            raise TypeError(
                f"{cls.__name__} is built from its settings and then bound to the network: "
                f"{cls.__name__}(...).bind(model, heads, branches=..., loss_fn=...)."
            )
        return super().__new__(cls)

    def __init__(self, magnitude: str = "off", head_options: HeadOptions | None = None) -> None:
        if magnitude not in self.magnitudes:
            raise ValueError(
                f"{type(self).__name__}: magnitude must be one of {self.magnitudes}, got {magnitude!r}."
            )
        self.magnitude = BranchMagnitude(magnitude, owner=type(self).__name__)
        self.head_options = HeadOptions() if head_options is None else head_options
        if not isinstance(self.head_options, HeadOptions):
            raise ValueError(f"head_options must be a HeadOptions, got {type(head_options).__name__}.")
        self.modalities: tuple[str, ...] = ()
        self.observer: HeadObserver | None = None
        self.heads: HeadTrainer | None = None
        self.params_by_modality: dict[str, list[nn.Parameter]] = {}
        self.stats: dict[str, float] = {}
        self._distributed = False

    # -- binding -----------------------------------------------------------------------------------
    def bind(
        self,
        model: nn.Module,
        heads: HeadTrainer | Mapping[str, nn.Module] | nn.ModuleDict,
        branches: BranchSpec | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> BalancingMethod:
        """Hook the method onto ``model``'s branches and its light heads; returns the method.

        Args:
            model: the multimodal network (or its ``DistributedDataParallel`` wrapper).
            heads: a :class:`HeadTrainer`, or modality -> head modules (a dict or
                ``nn.ModuleDict``), which are trained under :attr:`head_options` with ``loss_fn``.
            branches: modality -> encoder module name(s) or module(s) (``None``:
                ``model.branch_names()``).
            loss_fn: the fused task loss ``(logits, target) -> scalar`` (the heads' loss, CGGM's
                direction term).

        Raises:
            RuntimeError: the method is bound already.
            ValueError: heads and branches of different modalities, or heads that are neither.
        """
        if self.observer is not None:
            raise RuntimeError(f"this {type(self).__name__} is bound already: build one per network.")
        trainer = as_head_trainer(heads, loss_fn, self.head_options, self.default_score)
        params = branch_parameters(model, branches)
        if set(trainer.modalities) != set(params):
            raise ValueError(f"the heads cover {sorted(trainer.modalities)}, the branches {sorted(params)}.")
        self.heads = trainer
        self.params_by_modality = params
        self.modalities = tuple(params)
        self.magnitude.bind(params)
        self._distributed = isinstance(model, nn.parallel.DistributedDataParallel)
        self._bind(model, trainer, branches, loss_fn)
        if self.observer is None:
            self.observer = HeadObserver(model, trainer, branches)
        return self

    def _bind(
        self,
        model: nn.Module,
        heads: HeadTrainer,
        branches: BranchSpec | None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    ) -> None:
        """What a subclass needs from the network (it may set :attr:`observer` itself)."""

    def _require_bound(self) -> None:
        if self.observer is None:
            raise RuntimeError(
                f"bind the {type(self).__name__} to a network first: method.bind(model, heads)."
            )

    # -- one iteration -----------------------------------------------------------------------------
    def observe(self, target: torch.Tensor) -> dict[str, float]:
        """The heads train one step on the features the forward captured; the method updates its
        coefficients. Call after the model's forward, before or after ``loss.backward()``.

        Returns:
            :attr:`stats`.
        """
        self._require_bound()
        self._observe(target)
        return self.stats

    def _observe(self, target: torch.Tensor) -> None:
        raise NotImplementedError

    @property
    def adds_to_gradients(self) -> bool:
        """Whether :meth:`after_backward` may add to the network's gradients this iteration."""
        return False

    def after_backward(self, scale: float = 1.0) -> bool:
        """After ``loss.backward()``: add to the network's gradients what the method adds (scaled by
        ``scale``, the factor the loss was multiplied by before its backward). Returns whether what
        was added is finite (True when nothing was)."""
        return True

    def apply_magnitude(self, optimizer: torch.optim.Optimizer | None = None, epoch: int = 0) -> None:
        """Before the optimizer step: change each branch's step (gradients or learning rate).

        Args:
            optimizer: the network's optimizer (needed by magnitude ``"lr"``; checked once).
            epoch: the current epoch, 0-based (for methods with an epoch window).
        """

    def restore_magnitude(self) -> None:
        """After the optimizer step: put back what :meth:`apply_magnitude` changed."""
        self.magnitude.restore()

    def check_optimizer(
        self, optimizer: torch.optim.Optimizer | None, logger: logging.Logger | None = None
    ) -> None:
        """Check ``optimizer`` for the magnitude mode before the first step (see
        :meth:`cggm_seg.balancing.BranchMagnitude.check`)."""
        if optimizer is not None or self.magnitude.mode == "lr":
            self.magnitude.check(optimizer, logger)

    def step(
        self, optimizer: torch.optim.Optimizer, epoch: int = 0, scaler: torch.amp.GradScaler | None = None
    ) -> None:
        """:meth:`after_backward` (scaled as the GradScaler scaled the loss), :meth:`apply_magnitude`,
        ``optimizer.step()`` (or ``scaler.step(optimizer)``), :meth:`restore_magnitude`. Call after
        ``loss.backward()`` and :meth:`observe`; with a GradScaler call ``scaler.update()`` after it."""
        self._require_bound()
        scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
        self.after_backward(scale)
        self.apply_magnitude(optimizer, epoch)
        optimizer_step(optimizer, scaler, then=self.restore_magnitude)

    def discard(self) -> None:
        """Drop what the forward captured, for an iteration that is skipped."""
        if self.observer is not None:
            self.observer.clear()

    def remove(self) -> None:
        """Take the method's forward hooks off the model."""
        if self.observer is not None:
            self.observer.remove()

    # -- reporting and state -----------------------------------------------------------------------
    def stat_names_for(self, modalities: tuple[str, ...] | list[str]) -> list[str]:
        """The names of :attr:`stats` for ``modalities``: ``<kind>_<m>`` for each of :attr:`stat_kinds`."""
        return [f"{kind}_{m}" for kind in self.stat_kinds for m in modalities]

    @property
    def stat_names(self) -> list[str]:
        """The names of :attr:`stats` (after :meth:`bind`)."""
        return self.stat_names_for(self.modalities)

    @property
    def settings(self) -> dict[str, Any]:
        """The settings, for the log."""
        return {"magnitude": self.magnitude.mode}

    def state_dict(self) -> dict[str, Any]:
        """What the method needs to resume (plain tensors and numbers); the heads and their
        optimizer are saved by their owner."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


#: method name -> its class; ``"none"`` trains with no heads and no balancing handler.
METHODS: dict[str, type[BalancingMethod] | None] = {"none": None}


def register_method(cls: type[BalancingMethod]) -> type[BalancingMethod]:
    """Add ``cls`` to :data:`METHODS` under ``cls.name`` (usable as a class decorator).

    Raises:
        ValueError: another class holds the name.
    """
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        held = METHODS[cls.name]
        taken = "the networks without branches" if held is None else held.__qualname__
        raise ValueError(f"method name {cls.name!r} is taken by {taken}.")
    METHODS[cls.name] = cls
    return cls


def get_method_class(name: str) -> type[BalancingMethod] | None:
    """The class of method ``name`` (``None`` for ``"none"``).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if name not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {name!r}.")
    return METHODS[name]


def pick_method(methods: Mapping[str, BalancingMethod | None], name: str) -> BalancingMethod | None:
    """``methods[name]``: a bundle's ``methods`` block and its ``method`` key (``None`` for a method
    without heads, such as ``"none"``).

    Raises:
        ValueError: ``name`` is not in ``methods`` (the message lists them), or its entry is not a
            :class:`BalancingMethod`.
    """
    return pick_entry(methods, name, "method", BalancingMethod)


def pick_entry(block: Mapping[str, Any], name: str, key: str, cls: type) -> Any:
    """``block[name]`` of a bundle's block of choices (``methods``, ``recipes``) picked by its
    ``key`` (``method``, ``recipe``): ``None`` or an instance of ``cls``.

    Raises:
        ValueError: ``name`` is not in ``block`` (the message lists the choices), or its entry is
            neither ``None`` nor a ``cls``.
    """
    if name not in block:
        raise ValueError(f"{key} must be one of {sorted(block)}, got {name!r}.")
    chosen = block[name]
    if chosen is not None and not isinstance(chosen, cls):
        raise ValueError(
            f"{key}s#{name} must build a {cls.__name__} (give it a _target_), got {type(chosen).__name__}."
        )
    return chosen
