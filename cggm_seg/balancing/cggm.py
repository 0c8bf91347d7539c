"""CGGM: Classifier-Guided Gradient Modulation (Guo, Jin, Chen, Zhao; NeurIPS 2024), METHOD.md 1.3.

Two parts, both driven by the balancing coefficients B of :class:`BalanceTracker`:

- **Magnitude**: encoder branch i learns at ``B_i`` times its rate. ``grad`` mode multiplies the
  gradients of branch i by B_i between backward and the optimizer step (the paper's form; right
  for SGD). ``lr`` mode multiplies the learning rate of branch i's parameter group(s) by B_i for
  that step and restores it afterwards: the same intent, and it survives Adam/AdamW, which are
  (nearly) invariant to a constant gradient scale. ``off`` for direction-only ablations.
- **Direction**: the fused model's gradient is pulled towards the B-weighted unimodal gradient
  directions, ``max sum_i B_i cos(grad_F L, grad_{f_i} L_i)``, as the extra loss ``lam * L_gm``.
  ``gradient`` (default) compares this step's final-layer gradients; ``weights`` the final-layer
  weights (the reference code's variant, but on this step); ``off``. Its gradient is added to the
  final layer's gradient after the main backward (:meth:`CGGM.direction_backward`): the result is
  that of ``(loss + lam * L_gm).backward()``, but the small graph of the direction term is built
  once the network's activations are freed, so it adds nothing to the step's peak memory.

A hand-written loop uses :class:`CGGM` like this (the order matters)::

    cggm = CGGM(model, heads, loss_fn, branches={"t1": "encoders.t1", ...}, final="final")
    for x, y in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)        # 1. forward: hooks keep branch features + final input
        cggm.training_loss(loss, y)        # 2. heads step + tracker update -> B
        loss.backward()                    # 3. backward
        cggm.step(optimizer)               # 4. + grad of lam * L_gm, magnitude (grads or lrs x B), step

``training_loss`` may also come right after ``loss.backward()`` (the handlers' order): the heads'
graphs are then built once the network's activations are freed. With gradient accumulation or
gradient clipping, call ``cggm.direction_backward()`` right after
each ``loss.backward()`` (with ``scale=`` the factor the loss was multiplied by before backward:
a GradScaler's scale, ``1 / accumulation_steps``), before any clipping; :meth:`CGGM.step` then
finds nothing left to add.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cggm_seg.balancing.branches import BranchSpec, branch_parameters, resolve_module, unwrap_model
from cggm_seg.balancing.distributed import mean_over_ranks
from cggm_seg.balancing.heads import HeadStep, HeadTrainer, flat_parameters, no_autocast
from cggm_seg.balancing.observer import Cadence, HeadObserver
from cggm_seg.balancing.tracker import BalanceTracker

__all__ = [
    "MAGNITUDES",
    "DIRECTIONS",
    "direction_loss",
    "scale_gradients",
    "branch_param_groups",
    "check_branch_groups",
    "check_settings",
    "optimizer_step",
    "scale_learning_rates",
    "restore_learning_rates",
    "CGGM",
]

#: Magnitude modes: scale branch gradients, scale branch learning rates, or nothing.
MAGNITUDES: tuple[str, ...] = ("grad", "lr", "off")
#: Direction modes: cosine of final-layer gradients, of final-layer weights, or nothing.
DIRECTIONS: tuple[str, ...] = ("gradient", "weights", "off")


def direction_loss(coefficients: torch.Tensor, cosines: torch.Tensor) -> torch.Tensor:
    """CGGM's direction loss ``L_gm = (sum_i |B_i| - sum_i B_i cos_i) / M``.

    The paper's gradient-direction objective ``max sum_i B_i sim(grad_F L, grad_{f_i} L_i)`` written
    as a non-negative loss (0 when every cosine is 1 for positive B).

    Args:
        coefficients: shape ``M``, the balancing coefficients B (no gradient needed).
        cosines: shape ``M``, cos_i (differentiable).

    Returns:
        0-dim tensor.
    """
    # CGGM gradient direction, max sum_i B_i sim(grad_F L, grad_{f_i} L_i), as a loss (METHOD.md 1.1.5)
    return (coefficients.abs().sum() - (coefficients * cosines).sum()) / coefficients.numel()


def scale_gradients(
    params_by_modality: Mapping[str, Sequence[nn.Parameter]], coefficients: Mapping[str, float]
) -> None:
    """CGGM magnitude, ``grad`` mode: ``grad <- B_i * grad`` for every parameter of branch i.

    The update ``theta_i <- theta_i - lr * B_i * grad_i`` (CGGM, "gradient magnitude") under SGD.
    Parameters without a gradient are skipped; nothing outside the branches is touched.

    Args:
        params_by_modality: modality -> its branch parameters (:func:`branch_parameters`).
        coefficients: modality -> B_i.
    """
    for modality, params in params_by_modality.items():
        factor = float(coefficients[modality])
        for p in params:
            if p.grad is not None:
                p.grad.mul_(factor)  # CGGM magnitude: theta_i <- theta_i - lr * B_i * grad_i


def branch_param_groups(
    model: nn.Module, branches: BranchSpec | None = None, **opt_kwargs: Any
) -> list[dict[str, Any]]:
    """Optimizer parameter groups, one per branch plus one for the rest, for ``lr`` mode.

    Each group carries ``"modality"`` (the branch's modality, ``None`` for the rest), which
    :func:`scale_learning_rates` looks for::

        optimizer = torch.optim.AdamW(branch_param_groups(model, branches, lr=1e-4, weight_decay=1e-5))

    Args:
        model: the multimodal network.
        branches: as for :func:`resolve_branches` (``None``: ``model.branch_names()``).
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
    """CGGM magnitude, ``lr`` mode: multiply each branch group's ``lr`` by its B_i, for one step.

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
            group["lr"] = group["lr"] * float(coefficients[modality])  # lr * B_i: the same update under SGD
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


def check_settings(magnitude: str, direction: str, lam: float) -> None:
    """Check CGGM's modes and lambda.

    Raises:
        ValueError: an unknown magnitude or direction mode, or ``lam < 0``.
    """
    if magnitude not in MAGNITUDES:
        raise ValueError(f"magnitude must be one of {MAGNITUDES}, got {magnitude!r}.")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}.")
    if not lam >= 0:
        raise ValueError(f"lam must be >= 0, got {lam}.")


class CGGM:
    """Classifier-guided gradient modulation for a hand-written training loop (METHOD.md 1.3).

    Per iteration, in this order (see the module docstring for the loop):

    1. ``model(x)``: forward hooks keep each branch's output and the final layer's input.
    2. :meth:`training_loss`: the heads train one step on the detached features; their scores
       update the tracker, which gives B. The final layer's input is kept for the direction term.
    3. ``loss.backward()``.
    4. :meth:`step`: :meth:`direction_backward` (the gradient of ``lam * L_gm`` is added to the
       final layer's), magnitude (``grad``: branch gradients x B_i; ``lr``: branch learning rates
       x B_i, restored after the step), then ``optimizer.step()``.

    The ``gradient`` direction term is cheap and exact: the final layer is re-evaluated on its
    *detached* input, ``z' = final(x.detach())`` (numerically the model's output ``z``), so
    ``g_F = autograd.grad(loss_fn(z', y), final params, create_graph=True)`` is this step's gradient
    of the fused loss w.r.t. the final layer, and the gradient of ``L_gm`` reaches the final layer
    only, never the encoders. It assumes the model's output is ``final``'s output and the fused loss
    is ``loss_fn`` (extra loss terms are not part of g_F). It is evaluated after the main backward,
    with the final layer's weights of this step (the optimizer has not stepped yet), so the result
    equals back-propagating ``loss + lam * L_gm`` in one pass; under ``DistributedDataParallel`` its
    gradient is averaged over the ranks, as DDP averages the rest.

    Args:
        model: the multimodal network (one input tensor, one output tensor).
        heads: the :class:`HeadTrainer` of the unimodal heads (one per branch, same modalities).
        loss_fn: the fused task loss ``loss_fn(logits, target)`` (the direction term re-evaluates it).
        branches: modality -> encoder module name(s) / module(s) (``None``: ``model.branch_names()``).
        final: name (or module) of the fused model's final layer. Defaults to ``"final"``.
        tracker: the :class:`BalanceTracker` (``None``: the default ``trend`` tracker, rho 1).
        magnitude: ``"grad"`` (default, the paper's form), ``"lr"`` (for Adam/AdamW: needs an optimizer
            built with :func:`branch_param_groups`) or ``"off"``.
        direction: ``"gradient"`` (default), ``"weights"`` or ``"off"``.
        lam: weight lambda of ``L_gm`` (the paper: 0.1 on BraTS, 0.05-0.2 elsewhere). Defaults to 0.1.
        observe_every: the heads train, B is recomputed and the direction term is added at every
            ``observe_every``-th call of :meth:`training_loss` (the first included); in between the
            captured features are dropped and the last B still scales every step (magnitude). The
            tracker's horizon stays in iterations (it is built, or must have been built, with the
            same ``observe_every``: see :class:`BalanceTracker`). The direction term keeps its
            ``lam`` on the steps that have it, so its average weight is ``lam / observe_every``.
            Defaults to 1. A cost knob: the heads' step and the direction term are what CGGM costs.

    Attributes:
        coefficients: modality -> B_i of the current iteration (``None`` before the first).
        direction_grads: what the last :meth:`direction_backward` added to the final layer's
            gradients (scale included), one tensor per parameter; ``None`` before it.
        stats: the current iteration's ``eps_<m>``, ``d_<m>``, ``B_<m>``, ``head_loss_<m>``,
            ``cos_<m>`` and ``L_gm`` as floats (no ``cos_<m>`` with direction ``off``).

    Raises:
        ValueError: unknown mode, negative lam, heads / tracker / branches of different modalities,
            head final layers shaped unlike the fused final layer, ``observe_every < 1``, or a
            tracker built for another ``observe_every``.
    """

    def __init__(
        self,
        model: nn.Module,
        heads: HeadTrainer,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        branches: BranchSpec | None = None,
        final: str | nn.Module = "final",
        tracker: BalanceTracker | None = None,
        magnitude: str = "grad",
        direction: str = "gradient",
        lam: float = 0.1,
        observe_every: int = 1,
    ) -> None:
        check_settings(magnitude, direction, lam)
        self.cadence = Cadence(observe_every)  # which training_loss() calls train the heads
        self.params_by_modality = branch_parameters(model, branches)
        modalities = tuple(self.params_by_modality)
        if tracker is None:
            tracker = BalanceTracker(modalities, observe_every=self.observe_every)
        elif tracker.observe_every != self.observe_every:
            raise ValueError(
                f"the tracker is updated every {tracker.observe_every} iterations, CGGM observes "
                f"every {self.observe_every}: build it with BalanceTracker(..., "
                f"observe_every={self.observe_every})."
            )
        self.tracker = tracker
        for what, names in (("heads", heads.modalities), ("tracker", self.tracker.modalities)):
            if set(names) != set(modalities):
                raise ValueError(f"the {what} cover {sorted(names)}, the branches {sorted(modalities)}.")
        self.final = resolve_module(model, final, what="final layer")
        fused_shapes = [tuple(p.shape) for p in flat_parameters(self.final)]
        for modality, head in heads.heads.items():
            head_shapes = [tuple(p.shape) for p in flat_parameters(head.final)]
            if head_shapes != fused_shapes:
                raise ValueError(
                    f"head {modality!r}: its final layer has parameter shapes {head_shapes}, the fused "
                    f"final layer {fused_shapes}; they must match for the direction term."
                )
        self.heads = heads
        self.loss_fn = loss_fn
        self.magnitude = magnitude
        self.direction = direction
        self.lam = float(lam)
        self.observer = HeadObserver(model, heads, branches, final=self.final)
        self._distributed = isinstance(model, nn.parallel.DistributedDataParallel)
        # what direction_backward needs, kept by training_loss: the heads' step, target, final input
        self._pending: tuple[HeadStep, torch.Tensor, torch.Tensor | None] | None = None
        self.coefficients: dict[str, float] | None = None
        self.direction_grads: list[torch.Tensor] | None = None
        self.stats: dict[str, float] = {}
        self._saved_lrs: list[tuple[dict[str, Any], Any]] | None = None
        self._checked_optimizer: int | None = None

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities, in the tracker's (and B's) order."""
        return self.tracker.modalities

    def training_loss(self, loss: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Step 2 of the iteration: train the heads one step, update B; keep what the direction
        term needs for :meth:`direction_backward`.

        Call after the model's forward and before ``loss.backward()``.

        Args:
            loss: the fused task loss of this iteration (0-dim).
            target: this batch's target as ``loss_fn`` takes it.

        Returns:
            ``loss``, unchanged: the direction term's gradient is added after the backward.

        Between two observations (see ``observe_every``) it only drops the captured features: B
        stands, nothing is kept for the direction term, and :attr:`stats` are the last observation's.

        Raises:
            RuntimeError: direction ``gradient`` and the final layer's input was not captured (no
                forward of the model ran with gradients).
        """
        self._pending = None
        if not self.cadence.tick():  # between two observations: the last B stands
            self.observer.clear()
            return loss
        seen = self.observer.observe(target)
        order = [self.observer.modalities.index(m) for m in self.modalities]
        b = self.tracker.update(seen.scores[order], average_ranks=False)  # already the rank mean
        self.coefficients = dict(zip(self.modalities, b.tolist()))
        self.stats = self.tracker.stats()
        self.stats.update(seen.stats)
        self.stats["L_gm"] = 0.0
        if self.direction != "off":
            final_input = self.observer.final_input
            if self.direction == "gradient" and final_input is None:
                self.observer.clear()
                raise RuntimeError("the final layer's input was not captured: run the model's forward first.")
            self._pending = (seen.step, target.detach(), final_input)
        self.observer.clear()
        return loss

    def direction_backward(self, scale: float = 1.0) -> bool:
        """Step 4a: add ``scale`` x the gradient of ``lam * L_gm`` to the final layer's gradients.

        Call after ``loss.backward()`` and before the optimizer step (:meth:`step` calls it when it
        was not called). Does nothing with direction ``off`` or when nothing is pending (already
        applied, or no :meth:`training_loss` this iteration). ``cos_<m>`` and ``L_gm`` are put in
        :attr:`stats`.

        Args:
            scale: the factor the task loss was multiplied by before its backward, so that both
                gradients carry it: a GradScaler's current scale, ``1 / accumulation_steps``, their
                product. Defaults to 1.

        Returns:
            Whether the added gradient is finite (True when nothing was added). A non-finite one is
            added all the same, so that the step's gradients show it.
        """
        if self._pending is None:
            return True
        head_step, target, final_input = self._pending
        self._pending = None
        params = flat_parameters(self.final)
        cosines = self._cosines(head_step, target, final_input)
        self.observer.clear()  # re-evaluating the final layer ran its hook: keep nothing past the step
        b = torch.tensor([self.coefficients[m] for m in self.modalities])
        with torch.enable_grad(), no_autocast(target.device):
            l_gm = direction_loss(b.to(cosines), cosines)
            grads = torch.autograd.grad(self.lam * l_gm, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        flat = torch.cat([g.reshape(-1) for g in grads])
        if self._distributed:
            flat = mean_over_ranks(flat)  # DDP has averaged the task gradient over the ranks alike
        flat = flat * float(scale)
        offset = 0
        self.direction_grads = []
        for p in params:
            g = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()
            self.direction_grads.append(g)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.add_(g)
        self.stats.update({f"cos_{m}": float(c) for m, c in zip(self.modalities, cosines.detach())})
        self.stats["L_gm"] = float(l_gm.detach())
        return bool(torch.isfinite(flat).all())

    def discard_direction(self) -> None:
        """Drop what :meth:`training_loss` kept for the direction term (for a step that is skipped)."""
        self._pending = None

    def _cosines(
        self, head_step: HeadStep, target: torch.Tensor, final_input: torch.Tensor | None
    ) -> torch.Tensor:
        params = flat_parameters(self.final)
        with torch.enable_grad(), no_autocast(target.device):
            if self.direction == "gradient":
                # Only the final layer, on its detached input: g_F is this step's fused gradient,
                # and L_gm's gradient can reach the final layer only. In float32 outside autocast,
                # as the heads' gradients it is compared with (no GradScaler scales this gradient).
                # .mean(): a loss with reduction="none" is reduced as MONAI's SupervisedTrainer does
                fused_loss = self.loss_fn(self.final(final_input.float()), target).mean()
                fused = torch.autograd.grad(fused_loss, params, create_graph=True)
                fused_vec = torch.cat([g.reshape(-1) for g in fused])
                reference = head_step.final_grads
            else:
                fused_vec = torch.cat([p.reshape(-1) for p in params])
                reference = head_step.final_weights
            return torch.stack(
                [F.cosine_similarity(fused_vec, reference[m].to(fused_vec), dim=0) for m in self.modalities]
            )

    def apply_magnitude(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Step 4a: scale branch gradients (``grad``) or branch learning rates (``lr``) by B.

        Call after ``loss.backward()`` and before the optimizer step; in ``lr`` mode call
        :meth:`restore_magnitude` after the step (:meth:`step` does both).

        Raises:
            RuntimeError: no B yet (call :meth:`training_loss` first), or ``lr`` mode applied twice.
            ValueError: ``lr`` mode without an optimizer built by :func:`branch_param_groups`.
        """
        if self.magnitude == "off":
            return
        if self.coefficients is None:
            raise RuntimeError("no balancing coefficients yet: call training_loss() before the step.")
        if self.magnitude == "grad":
            scale_gradients(self.params_by_modality, self.coefficients)
            return
        if optimizer is None:
            raise ValueError("magnitude='lr' scales the optimizer's learning rates: pass the optimizer.")
        if self._saved_lrs is not None:
            raise RuntimeError("learning rates are already scaled: call restore_magnitude() after each step.")
        if self._checked_optimizer != id(optimizer):
            check_branch_groups(optimizer, self.params_by_modality)
            self._checked_optimizer = id(optimizer)
        self._saved_lrs = scale_learning_rates(optimizer, self.coefficients)

    def restore_magnitude(self) -> None:
        """Step 4c (``lr`` mode): put back the learning rates :meth:`apply_magnitude` scaled."""
        if self._saved_lrs is not None:
            restore_learning_rates(self._saved_lrs)
            self._saved_lrs = None

    def step(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None) -> None:
        """Step 4: :meth:`direction_backward` (if not called yet; scaled by the GradScaler's scale),
        :meth:`apply_magnitude`, ``optimizer.step()`` (or ``scaler.step(optimizer)``),
        :meth:`restore_magnitude`. With a GradScaler call ``scaler.update()`` afterwards as usual;
        call :meth:`direction_backward` yourself before any ``scaler.unscale_(optimizer)``."""
        scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0
        self.direction_backward(scale)
        self.apply_magnitude(optimizer)
        optimizer_step(optimizer, scaler, then=self.restore_magnitude)

    def remove(self) -> None:
        """Take CGGM's forward hooks off the model."""
        self.observer.remove()
        self.discard_direction()

    @property
    def observe_every(self) -> int:
        """Calls from one observation to the next."""
        return self.cadence.every

    @property
    def due(self) -> bool:
        """Whether the next :meth:`training_loss` observes (trains the heads, updates B)."""
        return self.cadence.due

    def state_dict(self) -> dict[str, Any]:
        """The tracker's state and the calls so far (heads, their optimizer and the model are
        checkpointed by the user)."""
        return {"tracker": self.tracker.state_dict(), "calls": self.cadence.calls}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`: B is the tracker's last, and the next observation comes
        when it would have come."""
        self.tracker.load_state_dict(state["tracker"])
        self.cadence.calls = int(state.get("calls", self.tracker.step))  # older states: one call an update
        self.coefficients = dict(zip(self.modalities, self.tracker.B.tolist())) if self.tracker.step else None
