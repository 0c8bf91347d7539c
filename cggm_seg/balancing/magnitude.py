"""How a balancing method changes one encoder branch's step: its gradients or its learning rate.

CGGM multiplies branch i's step by B_i, OGM-GE by k_i. With SGD both forms are the same:

- ``"grad"``: multiply the branch's gradients between the backward and the optimizer step (the
  papers' form);
- ``"lr"``: multiply the learning rate of the branch's parameter group(s) for that step and put it
  back afterwards. Adam, AdamW and the other adaptive optimizers divide each step by a running
  gradient scale, so that a scaled gradient moves the weights by (almost) the same amount: for them
  only ``"lr"`` acts. It needs an optimizer whose parameter groups are tagged by branch
  (:func:`branch_param_groups`).

:class:`BranchMagnitude` holds this bookkeeping once for every method: the check of the optimizer
(a warning for ``"grad"`` with an adaptive optimizer, an error for ``"lr"`` without branch
groups), the learning rates saved and restored around each step.
"""

from __future__ import annotations

import logging
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from cggm_seg.balancing.branches import BranchSpec, branch_parameters, unwrap_model

__all__ = [
    "MAGNITUDES",
    "ADAPTIVE_OPTIMIZERS",
    "BranchMagnitude",
    "branch_param_groups",
    "check_branch_groups",
    "check_magnitude",
    "optimizer_step",
    "restore_learning_rates",
    "scale_gradients",
    "scale_learning_rates",
]

#: Magnitude modes: scale branch gradients, scale branch learning rates, or nothing.
MAGNITUDES: tuple[str, ...] = ("grad", "lr", "off")

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


def check_magnitude(magnitude: str, allowed: Sequence[str] = MAGNITUDES) -> None:
    """Raises ValueError for a magnitude mode not in ``allowed``."""
    if magnitude not in allowed:
        raise ValueError(f"magnitude must be one of {tuple(allowed)}, got {magnitude!r}.")


def scale_gradients(
    params_by_modality: Mapping[str, Sequence[nn.Parameter]], coefficients: Mapping[str, float]
) -> None:
    """``grad <- c_i * grad`` for every parameter of branch i (parameters without a gradient are
    skipped; nothing outside the branches is touched).

    Args:
        params_by_modality: modality -> its branch parameters (:func:`branch_parameters`).
        coefficients: modality -> c_i (CGGM's B_i).
    """
    for modality, params in params_by_modality.items():
        factor = float(coefficients[modality])
        for p in params:
            if p.grad is not None:
                p.grad.mul_(factor)  # CGGM magnitude: theta_i <- theta_i - lr * B_i * grad_i


def branch_param_groups(
    model: nn.Module, branches: BranchSpec | None = None, **opt_kwargs: Any
) -> list[dict[str, Any]]:
    """Optimizer parameter groups, one per branch plus one for the rest, for magnitude ``"lr"``.

    Each group carries ``"modality"`` (the branch's modality, ``None`` for the rest), which
    :func:`scale_learning_rates` looks for::

        optimizer = torch.optim.AdamW(branch_param_groups(model, branches, lr=1e-4, weight_decay=1e-5))

    Args:
        model: the multimodal network.
        branches: as for :func:`~cggm_seg.balancing.resolve_branches` (``None``: ``model.branch_names()``).
        opt_kwargs: optimizer options put in every group (``lr``, ``weight_decay``, ...).

    Returns:
        A list of param-group dicts; the rest group is left out when every parameter is in a branch.
    """
    by_modality = branch_parameters(model, branches)
    in_branch = {id(p) for params in by_modality.values() for p in params}
    groups = [{"params": params, "modality": m, **opt_kwargs} for m, params in by_modality.items()]
    rest = [p for p in unwrap_model(model).parameters() if id(p) not in in_branch]
    if rest:
        groups.append({"params": rest, "modality": None, **opt_kwargs})
    return groups


def check_branch_groups(
    optimizer: torch.optim.Optimizer, params_by_modality: Mapping[str, Sequence[nn.Parameter]]
) -> None:
    """Check that every branch's trainable parameters sit in param groups tagged with its modality.

    Raises:
        ValueError: a group mixes branches, or a branch parameter is in no tagged group.
    """
    owner = {id(p): m for m, params in params_by_modality.items() for p in params}
    covered: set[int] = set()
    hint = "build the optimizer with branch_param_groups(model, branches, lr=...) for magnitude='lr'"
    for index, group in enumerate(optimizer.param_groups):
        tag = group.get("modality")
        for p in group["params"]:
            if owner.get(id(p)) != tag:
                where = owner.get(id(p), "no branch")
                raise ValueError(
                    f"param group {index} (modality {tag!r}) holds a parameter of {where!r}: {hint}."
                )
            covered.add(id(p))
    missing = [
        m
        for m, params in params_by_modality.items()
        if any(p.requires_grad and id(p) not in covered for p in params)
    ]
    if missing:
        raise ValueError(f"branches {missing} have trainable parameters in no tagged param group: {hint}.")


def scale_learning_rates(
    optimizer: torch.optim.Optimizer, coefficients: Mapping[str, float]
) -> list[tuple[dict[str, Any], Any]]:
    """Multiply each branch group's ``lr`` by its coefficient, for one step.

    Groups are matched by their ``"modality"`` key (:func:`branch_param_groups`); other groups keep
    their learning rate. Call :func:`restore_learning_rates` with the return value after the step.

    Returns:
        ``(group, original lr)`` pairs.
    """
    saved = []
    for group in optimizer.param_groups:
        modality = group.get("modality")
        if modality in coefficients:
            saved.append((group, group["lr"]))
            group["lr"] = group["lr"] * float(coefficients[modality])  # lr * c_i: the same update under SGD
    return saved


def restore_learning_rates(saved: Sequence[tuple[dict[str, Any], Any]]) -> None:
    """Put back the learning rates :func:`scale_learning_rates` changed."""
    for group, lr in saved:
        group["lr"] = lr


def optimizer_step(
    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, then: Callable[[], None]
) -> None:
    """``optimizer.step()`` (or ``scaler.step(optimizer)``), then ``then()`` even if the step fails
    (the ``lr`` modes put the branches' learning rates back there)."""
    try:
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
    finally:
        then()


class BranchMagnitude:
    """One method's magnitude mode over the branches of one network: the optimizer check and the
    learning rates scaled for a step and restored after it.

    Args:
        mode: ``"grad"``, ``"lr"`` or ``"off"`` (see the module docstring).
        owner: the method's name, for messages.

    Attributes:
        params_by_modality: modality -> branch parameters (set by :meth:`bind`).
    """

    def __init__(self, mode: str, owner: str = "the method") -> None:
        check_magnitude(mode)
        self.mode = mode
        self.owner = owner
        self.params_by_modality: dict[str, list[nn.Parameter]] = {}
        self._saved: list[tuple[dict[str, Any], Any]] | None = None
        self._checked: weakref.ref | None = None  # the optimizer checked last

    def bind(self, params_by_modality: Mapping[str, Sequence[nn.Parameter]]) -> None:
        """Set the branches whose steps are scaled."""
        self.params_by_modality = {m: list(p) for m, p in params_by_modality.items()}
        self._checked = None

    def check(self, optimizer: torch.optim.Optimizer | None, logger: logging.Logger | None = None) -> None:
        """Check ``optimizer`` for this mode, once per optimizer.

        ``"grad"`` with an adaptive optimizer (:data:`ADAPTIVE_OPTIMIZERS`) warns: the optimizer
        normalises the gradient's scale away, so the scaling has almost no effect.

        Raises:
            ValueError: ``"lr"`` without an optimizer, or with one whose parameter groups are not
                tagged by branch (:func:`branch_param_groups`).
        """
        if self.mode == "lr" and optimizer is None:
            raise ValueError("magnitude='lr' scales the optimizer's learning rates: pass the optimizer.")
        if optimizer is None or (self._checked is not None and self._checked() is optimizer):
            return
        if self.mode == "lr":
            check_branch_groups(optimizer, self.params_by_modality)
        elif self.mode == "grad" and isinstance(optimizer, ADAPTIVE_OPTIMIZERS):
            message = (
                f"{self.owner}: magnitude='grad' scales the branches' gradients, but "
                f"{type(optimizer).__name__} divides each step by a running gradient scale, so the scaling "
                "has almost no effect (a silent no-op). Use magnitude='lr' with an optimizer built by "
                "cggm_seg.balancing.branch_param_groups(network, branches), or SGD."
            )
            warnings.warn(message, UserWarning, stacklevel=3)
            if logger is not None:
                logger.warning(message)
        self._checked = weakref.ref(optimizer)

    def scale_learning_rates(
        self, optimizer: torch.optim.Optimizer | None, factors: Mapping[str, float]
    ) -> None:
        """``"lr"`` mode: each branch group's learning rate times its factor, until :meth:`restore`.

        Raises:
            RuntimeError: the learning rates are already scaled (no :meth:`restore` after a step).
            ValueError: as :meth:`check`.
        """
        self.check(optimizer)
        if self._saved is not None:
            raise RuntimeError("learning rates are already scaled: call restore_magnitude() after each step.")
        self._saved = scale_learning_rates(optimizer, factors)

    def restore(self) -> None:
        """Put back the learning rates :meth:`scale_learning_rates` changed (nothing otherwise)."""
        if self._saved is not None:
            restore_learning_rates(self._saved)
            self._saved = None
