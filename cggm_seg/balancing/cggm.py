"""CGGM: Classifier-Guided Gradient Modulation (Guo, Jin, Chen, Zhao; NeurIPS 2024).

Two parts, both driven by the balancing coefficients B of :class:`BalanceTracker`
(``docs/methods.md``):

- **Magnitude**: encoder branch i learns at ``B_i`` times its rate. ``grad`` mode multiplies the
  gradients of branch i by B_i between backward and the optimizer step (the paper's form; right
  for SGD). ``lr`` mode multiplies the learning rate of branch i's parameter group(s) by B_i for
  that step and restores it afterwards: the same intent, and it survives Adam/AdamW, which are
  (nearly) invariant to a constant gradient scale. ``off`` for direction-only ablations.
- **Direction**: the fused model's gradient is pulled towards the B-weighted unimodal gradient
  directions, ``max sum_i B_i cos(grad_F L, grad_{f_i} L_i)``, as the extra loss ``lam * L_gm``.
  ``gradient`` (default) compares this step's final-layer gradients; ``weights`` the final-layer
  weights (the reference code's variant, but on this step); ``off``. Its gradient is added to the
  final layer's gradient after the main backward (:meth:`CGGM.after_backward`): the result is
  that of ``(loss + lam * L_gm).backward()``, but the small graph of the direction term is built
  once the network's activations are freed, so it adds nothing to the step's peak memory.

A hand-written loop::

    cggm = CGGM(lam=0.1).bind(model, heads, branches={"t1": "encoders.t1", ...}, loss_fn=loss_fn)
    for x, y in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)        # forward: hooks keep branch features + final input
        loss.backward()
        cggm.observe(y)                    # heads step + tracker update -> B
        cggm.step(optimizer)               # + grad of lam * L_gm, magnitude (grads or lrs x B), step

With gradient accumulation or gradient clipping, call ``cggm.after_backward(scale)`` right after
each ``loss.backward()`` (``scale``: the factor the loss was multiplied by before backward, a
GradScaler's scale or ``1 / accumulation_steps``), before any clipping; :meth:`CGGM.step` then
finds nothing left to add.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cggm_seg.balancing.branches import BranchSpec, resolve_module
from cggm_seg.balancing.distributed import mean_over_ranks
from cggm_seg.balancing.head_trainer import HeadOptions, HeadStep, HeadTrainer, flat_parameters, no_autocast
from cggm_seg.balancing.magnitude import (  # noqa: F401  (re-exported: their home before magnitude.py)
    MAGNITUDES,
    branch_param_groups,
    check_branch_groups,
    optimizer_step,
    restore_learning_rates,
    scale_gradients,
    scale_learning_rates,
)
from cggm_seg.balancing.method import BalancingMethod, register_method
from cggm_seg.balancing.observer import HeadObserver
from cggm_seg.balancing.tracker import BalanceTracker

__all__ = ["DIRECTIONS", "direction_loss", "check_settings", "CGGM"]

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
    # CGGM gradient direction, max sum_i B_i sim(grad_F L, grad_{f_i} L_i), as a loss
    return (coefficients.abs().sum() - (coefficients * cosines).sum()) / coefficients.numel()


def check_settings(direction: str, lam: float) -> None:
    """Check CGGM's direction mode and lambda (the magnitude mode is checked by
    :class:`~cggm_seg.balancing.BalancingMethod`, as for every method).

    Raises:
        ValueError: an unknown direction mode, or ``lam < 0``.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}.")
    if not lam >= 0:
        raise ValueError(f"lam must be >= 0, got {lam}.")


@register_method
class CGGM(BalancingMethod):
    """Classifier-guided gradient modulation (see the module docstring for a hand-written loop).

    Per iteration, once bound (:meth:`bind`):

    1. ``model(x)``: forward hooks keep each branch's output and the final layer's input.
    2. :meth:`observe` (before or after ``loss.backward()``): the heads train one step on the
       detached features; their scores update the tracker, which gives B.
    3. :meth:`after_backward`: the gradient of ``lam * L_gm`` is added to the final layer's.
    4. :meth:`apply_magnitude`: branch gradients (``grad``) or branch learning rates (``lr``) x
       B_i; after the optimizer step :meth:`restore_magnitude` (:meth:`step` does 3, 4, the step
       and the restore).

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
        tracker: the :class:`BalanceTracker` that turns the heads' scores into B (``None``: the
            default ``trend`` tracker over the branches' modalities).
        magnitude: ``"grad"`` (default, the paper's form), ``"lr"`` (for Adam/AdamW: needs an
            optimizer built with :func:`~cggm_seg.balancing.branch_param_groups`) or ``"off"``.
        direction: ``"gradient"`` (default), ``"weights"`` or ``"off"``.
        lam: weight lambda of ``L_gm`` (the paper: 0.1 on BraTS, 0.05-0.2 elsewhere). Defaults to 0.1.
        final: name (or module) of the fused model's final layer. Defaults to ``"final"``.
        head_options: the heads' :class:`~cggm_seg.balancing.HeadOptions` (score ``"soft_dice"``
            unless given).

    Attributes:
        coefficients: modality -> B_i of the current iteration (``None`` before the first).
        direction_grads: what the last :meth:`after_backward` added to the final layer's
            gradients (scale included), one tensor per parameter; ``None`` before it.
        stats: the current iteration's ``eps_<m>``, ``d_<m>``, ``B_<m>``, ``head_loss_<m>``,
            ``cos_<m>`` and ``L_gm`` as floats (no ``cos_<m>`` with direction ``off``).

    Raises:
        ValueError: unknown mode, negative lam (here); when bound, heads / tracker / branches of
            different modalities, or head final layers shaped unlike the fused final layer.
    """

    name = "cggm"
    default_score = "soft_dice"
    plot_panels = (("eps", "head score eps_i (smoothed)"), ("B", "balancing coefficient B_i"))

    def __init__(
        self,
        tracker: BalanceTracker | None = None,
        magnitude: str = "grad",
        direction: str = "gradient",
        lam: float = 0.1,
        final: str | nn.Module = "final",
        head_options: HeadOptions | None = None,
    ) -> None:
        super().__init__(magnitude, head_options)
        check_settings(direction, lam)
        if tracker is not None and not isinstance(tracker, BalanceTracker):
            raise ValueError(f"tracker must be a BalanceTracker, got {type(tracker).__name__}.")
        self.tracker = tracker
        self.direction = direction
        self.lam = float(lam)
        self.final_spec = final
        self.final: nn.Module | None = None
        self.loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
        # what after_backward needs, kept by observe: the heads' step, target, final input
        self._pending: tuple[HeadStep, torch.Tensor, torch.Tensor | None] | None = None
        self.coefficients: dict[str, float] | None = None
        self.direction_grads: list[torch.Tensor] | None = None

    def _bind(
        self,
        model: nn.Module,
        heads: HeadTrainer,
        branches: BranchSpec | None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    ) -> None:
        if loss_fn is None and self.direction != "off":
            raise ValueError("CGGM's direction term re-evaluates the fused loss: pass loss_fn= to bind().")
        if self.tracker is None:
            self.tracker = BalanceTracker(self.modalities)
        if set(self.tracker.modalities) != set(self.modalities):
            raise ValueError(
                f"the tracker covers {sorted(self.tracker.modalities)}, "
                f"the branches {sorted(self.modalities)}."
            )
        self.modalities = self.tracker.modalities  # B's order
        self.final = resolve_module(model, self.final_spec, what="final layer")
        fused_shapes = [tuple(p.shape) for p in flat_parameters(self.final)]
        for modality, head in heads.heads.items():
            head_shapes = [tuple(p.shape) for p in flat_parameters(head.final)]
            if head_shapes != fused_shapes:
                raise ValueError(
                    f"head {modality!r}: its final layer has parameter shapes {head_shapes}, the fused "
                    f"final layer {fused_shapes}; they must match for the direction term."
                )
        self.loss_fn = loss_fn
        self.observer = HeadObserver(model, heads, branches, final=self.final)

    @property
    def stat_kinds(self) -> tuple[str, ...]:  # type: ignore[override]
        kinds = ("eps", "d", "B", "head_loss")
        return kinds + ("cos",) if self.direction != "off" else kinds

    def stat_names_for(self, modalities: tuple[str, ...] | list[str]) -> list[str]:
        """``eps_<m>``, ``d_<m>``, ``B_<m>``, ``head_loss_<m>``, ``cos_<m>`` (not with direction
        ``off``) and ``L_gm``."""
        return super().stat_names_for(modalities) + ["L_gm"]

    @property
    def settings(self) -> dict[str, Any]:
        tracker = self.tracker
        rest = {} if tracker is None else {"rho": tracker.rho, "preset": tracker.preset}
        return {"magnitude": self.magnitude.mode, "direction": self.direction, "lam": self.lam, **rest}

    @property
    def adds_to_gradients(self) -> bool:
        """The direction term adds its gradient after the backward (not with direction ``off``)."""
        return self.direction != "off"

    def _observe(self, target: torch.Tensor) -> None:
        """Train the heads one step, update B, keep what the direction term needs.

        Raises:
            RuntimeError: direction ``gradient`` and the final layer's input was not captured (no
                forward of the model ran with gradients).
        """
        self._pending = None
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

    def after_backward(self, scale: float = 1.0) -> bool:
        """Add ``scale`` x the gradient of ``lam * L_gm`` to the final layer's gradients.

        Call after ``loss.backward()`` and before the optimizer step (:meth:`step` calls it). Does
        nothing with direction ``off`` or when nothing is pending (already applied, or no
        :meth:`observe` this iteration). ``cos_<m>`` and ``L_gm`` are put in :attr:`stats`.

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

    def discard(self) -> None:
        """Drop what the forward captured and what :meth:`observe` kept for the direction term."""
        self._pending = None
        super().discard()

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

    def apply_magnitude(self, optimizer: torch.optim.Optimizer | None = None, epoch: int = 0) -> None:
        """Scale branch gradients (``grad``) or branch learning rates (``lr``) by B.

        Call after ``loss.backward()`` and before the optimizer step; in ``lr`` mode call
        :meth:`restore_magnitude` after the step (:meth:`step` does both). ``epoch`` is unused.

        Raises:
            RuntimeError: no B yet (call :meth:`observe` first), or ``lr`` mode applied twice.
            ValueError: ``lr`` mode without an optimizer built by :func:`branch_param_groups`.
        """
        mode = self.magnitude.mode
        if mode == "off":
            return
        if self.coefficients is None:
            raise RuntimeError("no balancing coefficients yet: call observe() before the step.")
        if mode == "grad":
            self.magnitude.check(optimizer)
            scale_gradients(self.params_by_modality, self.coefficients)
        else:
            self.magnitude.scale_learning_rates(optimizer, self.coefficients)

    def remove(self) -> None:
        """Take CGGM's forward hooks off the model."""
        super().remove()
        self._pending = None

    def state_dict(self) -> dict[str, Any]:
        """The tracker's state (heads, their optimizer and the model are checkpointed by the user)."""
        return {"tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`: B is the tracker's last."""
        self.tracker.load_state_dict(state["tracker"])
        self.coefficients = dict(zip(self.modalities, self.tracker.B.tolist())) if self.tracker.step else None
