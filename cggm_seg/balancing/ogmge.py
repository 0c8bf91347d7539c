"""OGM-GE: On-the-fly Gradient Modulation with Generalisation Enhancement (Peng et al., CVPR 2022).

METHOD.md 2.3. Each iteration the unimodal heads score their modality (mean true-class
probability); a modality that scores above the others is dominant and its encoder's gradient is
scaled down by ``k_m < 1``; Gaussian noise with the spread of the gradient itself (GE) restores the
stochastic-gradient noise the scaling removed. Both act only for epochs in ``[start_epoch, end_epoch)``.

Generalised to any M >= 2 (documented choice): ``rho_m = s_m / mean_{k != m} s_k``, which is the
paper's ``rho^a = sum s^a / sum s^v`` when M = 2. Branches are chosen by module, so parameters of
any tensor rank are modulated (the official code only touched 4-D gradients, METHOD.md 2.2).

A hand-written loop::

    ogm = OGMGE(model, heads, branches={"audio": "encoders.audio", "visual": "encoders.visual"})
    for epoch in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)   # forward: hooks keep the branch features
            ogm.observe(y)                # heads step -> scores s -> k
            loss.backward()
            ogm.step(optimizer, epoch)    # grads of branch m: k_m * g + N(0, std(g)^2), then step
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from cggm_seg.balancing.branches import BranchSpec, branch_parameters
from cggm_seg.balancing.cggm import (
    check_branch_groups,
    optimizer_step,
    restore_learning_rates,
    scale_learning_rates,
)
from cggm_seg.balancing.heads import HeadTrainer
from cggm_seg.balancing.observer import Cadence, HeadObserver

__all__ = ["discrepancy_ratios", "ogm_coefficients", "OGMGE"]


def discrepancy_ratios(scores: torch.Tensor) -> torch.Tensor:
    """OGM-GE's discrepancy ratio for M modalities, ``rho_m = s_m / mean_{k != m} s_k``.

    For M = 2 this is the paper's ``rho^v = sum_i s_i^v / sum_i s_i^a`` (and ``rho^a = 1 / rho^v``);
    batch sums or batch means give the same ratio.

    Args:
        scores: shape ``M`` (M >= 2), per-modality scores s_m (true-class probabilities, >= 0).

    Returns:
        shape ``M``; ``inf`` where the others all score 0, ``nan`` where everything is 0.

    Raises:
        ValueError: ``scores`` is not a vector of at least two entries.
    """
    if scores.ndim != 1 or scores.numel() < 2:
        raise ValueError(f"scores must be a vector of M >= 2 values, got shape {tuple(scores.shape)}.")
    m = scores.numel()
    others = torch.stack([torch.cat([scores[:i], scores[i + 1 :]]).mean() for i in range(m)])
    return scores / others  # OGM-GE discrepancy ratio rho_t^u, generalised: s_m / mean_{k != m} s_k


def ogm_coefficients(ratios: torch.Tensor, alpha: float, continuous: bool = False) -> torch.Tensor:
    """OGM-GE's modulation coefficient ``k_m`` from the discrepancy ratios.

    The paper (coefficient k_t^u): ``k = 1 - tanh(alpha * rho)`` if ``rho > 1``, else 1. It jumps from
    1 to ``1 - tanh(alpha)`` as rho crosses 1; ``continuous=True`` uses ``1 - tanh(alpha * (rho - 1))``
    for ``rho > 1`` instead, which is continuous at rho = 1. A ``nan`` ratio gives 1 (no evidence
    of dominance).

    Args:
        ratios: shape ``M``, rho_m (:func:`discrepancy_ratios`).
        alpha: modulation strength (paper: 0.8 on CREMA-D, 0.1 on VGGSound).
        continuous: use the continuous form.

    Returns:
        shape ``M``, in [0, 1].
    """
    excess = ratios - 1.0 if continuous else ratios
    # OGM-GE coefficient: k_t^u = 1 - tanh(alpha * rho_t^u) if rho_t^u > 1 else 1
    return torch.where(ratios > 1.0, 1.0 - torch.tanh(alpha * excess), torch.ones_like(ratios))


class OGMGE:
    """OGM-GE for a hand-written training loop, any number of modalities (see the module docstring).

    Per iteration: ``model(x)`` (hooks keep the branch features) -> :meth:`observe` (the heads train
    one step on the detached features; their scores give k) -> ``loss.backward()`` ->
    :meth:`step` (inside the epoch window: branch gradients ``g <- k_m * g + h``,
    ``h ~ N(0, std(g)^2)`` per parameter tensor, then ``optimizer.step()``).

    Args:
        model: the multimodal network.
        heads: the :class:`HeadTrainer` of the unimodal heads; its score should be a true-class
            probability (``"region_true_class_probability"`` for segmentation,
            ``"true_class_probability"`` for classification) or another bounded score.
        branches: modality -> encoder module name(s) / module(s) (``None``: ``model.branch_names()``).
        alpha: modulation strength alpha. Defaults to 0.8 (the paper's CREMA-D value).
        continuous: use ``1 - tanh(alpha * (rho - 1))`` (continuous at rho = 1) instead of the paper's
            ``1 - tanh(alpha * rho)``. Defaults to False.
        noise: add the GE noise (OGM-GE); False gives plain OGM. Defaults to True.
        start_epoch: first epoch of the modulation window. Defaults to 0.
        end_epoch: first epoch after the window; ``None`` for no end. Defaults to 50 (the official
            0-50 of 100 epochs).
        magnitude: ``"grad"`` (default, the paper's form: branch gradients ``k_m * g + h``; right for
            SGD) or ``"lr"`` (the branch's learning rate times ``k_m`` for the step, the GE noise
            added to the gradient: ``theta <- theta - lr * k_m * (g + h)``; survives Adam/AdamW,
            which are nearly invariant to a gradient's scale; needs an optimizer built with
            :func:`~cggm_seg.balancing.cggm.branch_param_groups`).
        seed: seed of the noise generator (one per device); ``None`` uses torch's global generator.
            Under DDP give a seed, so that every rank adds the same noise to its (identical) gradients.
        observe_every: the heads train and k is recomputed at every ``observe_every``-th call of
            :meth:`observe` (the first included); the calls in between drop the captured features
            and keep the last k, which still modulates every step. Defaults to 1 (every iteration).
            A cost knob: the heads' step is most of what OGM-GE costs.

    Attributes:
        scores: shape ``M``, the last scores s_m (averaged over ranks).
        ratios: shape ``M``, the last rho_m.
        k: shape ``M``, the last coefficients k_m.
        stats: ``s_<m>``, ``rho_<m>``, ``k_<m>``, ``head_loss_<m>`` of the last iteration as floats.

    Raises:
        ValueError: heads and branches of different modalities, alpha < 0, an empty window, or
            ``observe_every < 1``.
    """

    def __init__(
        self,
        model: nn.Module,
        heads: HeadTrainer,
        branches: BranchSpec | None = None,
        alpha: float = 0.8,
        continuous: bool = False,
        noise: bool = True,
        start_epoch: int = 0,
        end_epoch: int | None = 50,
        seed: int | None = None,
        magnitude: str = "grad",
        observe_every: int = 1,
    ) -> None:
        self.cadence = Cadence(observe_every)  # which observe() calls train the heads
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}.")
        if end_epoch is not None and end_epoch <= start_epoch:
            raise ValueError(f"the epoch window [{start_epoch}, {end_epoch}) is empty.")
        self.params_by_modality = branch_parameters(model, branches)
        if set(heads.modalities) != set(self.params_by_modality):
            raise ValueError(
                f"the heads cover {sorted(heads.modalities)}, the branches {sorted(self.params_by_modality)}."
            )
        self.modalities = tuple(self.params_by_modality)
        self.heads = heads
        self.alpha = float(alpha)
        self.continuous = continuous
        self.noise = noise
        self.start_epoch = int(start_epoch)
        self.end_epoch = None if end_epoch is None else int(end_epoch)
        if magnitude not in ("grad", "lr"):
            raise ValueError(f"magnitude must be 'grad' or 'lr', got {magnitude!r}.")
        self.magnitude = magnitude
        self._saved_lrs: list | None = None
        self._checked_optimizer: int | None = None
        self.seed = seed
        self.observer = HeadObserver(model, heads, branches)
        m = len(self.modalities)
        self.scores = torch.full((m,), math.nan, dtype=torch.float64)
        self.ratios = torch.full((m,), math.nan, dtype=torch.float64)
        self.k = torch.ones(m, dtype=torch.float64)
        self.stats: dict[str, float] = {}
        self._generators: dict[str, torch.Generator] = {}

    @property
    def observe_every(self) -> int:
        """Calls from one observation to the next."""
        return self.cadence.every

    def in_window(self, epoch: int) -> bool:
        """True when ``epoch`` is in ``[start_epoch, end_epoch)``."""
        return epoch >= self.start_epoch and (self.end_epoch is None or epoch < self.end_epoch)

    def observe(self, target: torch.Tensor) -> torch.Tensor:
        """Train the heads one step on the captured features and compute k from their scores.

        Call after the model's forward (before or after ``loss.backward()``).

        Args:
            target: this batch's target as the heads' loss takes it.

        Returns:
            k, shape ``M``, float64 on the CPU (also kept as :attr:`k`).
        """
        if not self.cadence.tick():  # between two observations: the last k stands (see observe_every)
            self.observer.clear()
            return self.k
        seen = self.observer.observe(target)
        self.scores = seen.scores
        self.ratios = discrepancy_ratios(self.scores)
        self.k = ogm_coefficients(self.ratios, self.alpha, self.continuous)
        self.stats = {}
        for name, values in (("s", self.scores), ("rho", self.ratios), ("k", self.k)):
            self.stats.update({f"{name}_{m}": float(v) for m, v in zip(self.modalities, values)})
        self.stats.update(seen.stats)
        return self.k

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def apply_magnitude(self, epoch: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Inside the epoch window, ``g <- k_m * g + h`` for every gradient of branch m (``grad``), or
        ``g <- g + h`` and the branch's learning rate times ``k_m`` (``lr``; call
        :meth:`restore_magnitude` after the step, :meth:`step` does both).

        ``h ~ N(0, std(g)^2)`` elementwise, with std the (unbiased) standard deviation of that
        parameter tensor's gradient before scaling: the official isotropic approximation of
        ``N(0, Sigma_sgd)`` (0 for one-element tensors). Outside the window nothing changes.

        Args:
            epoch: the current epoch (0-based, as the window).
            optimizer: the optimizer (``lr`` mode only).

        Raises:
            ValueError: ``lr`` mode without an optimizer, or one not built by ``branch_param_groups``.
        """
        if not self.in_window(epoch):
            return
        if self.magnitude == "lr":
            if optimizer is None:
                raise ValueError("magnitude='lr' scales the optimizer's learning rates: pass the optimizer.")
            if self._saved_lrs is not None:
                raise RuntimeError(
                    "learning rates are already scaled: call restore_magnitude() after each step."
                )
            if self._checked_optimizer != id(optimizer):
                check_branch_groups(optimizer, self.params_by_modality)
                self._checked_optimizer = id(optimizer)
            self._saved_lrs = scale_learning_rates(optimizer, dict(zip(self.modalities, self.k.tolist())))
        for modality, params in self.params_by_modality.items():
            factor = float(self.k[self.modalities.index(modality)]) if self.magnitude == "grad" else 1.0
            self._modulate_branch(params, factor)

    def _modulate_branch(
        self, params: list[nn.Parameter], factor: float, generator: torch.Generator | None = None
    ) -> None:
        """``g <- factor * g + h`` for each gradient of one branch (:meth:`apply_magnitude`).

        ``generator``: draw the noise from it instead of this OGM-GE's own generator of the
        gradient's device (``scripts/bench_ge_noise.py`` gives each branch its own).
        """
        for p in params:
            if p.grad is None:
                continue
            grad = p.grad
            std = float(grad.std()) if (self.noise and grad.numel() > 1) else 0.0
            if factor != 1.0:  # OGM-GE: theta <- theta - lr * (k * g + h), h ~ N(0, Sigma_sgd)
                grad.mul_(factor)
            if std > 0.0 and math.isfinite(std):
                draw_from = generator if generator is not None else self._generator(grad.device)
                grad.add_(
                    torch.randn(grad.shape, generator=draw_from, device=grad.device, dtype=grad.dtype),
                    alpha=std,
                )

    def step(
        self, optimizer: torch.optim.Optimizer, epoch: int, scaler: torch.amp.GradScaler | None = None
    ) -> None:
        """:meth:`apply_magnitude`, ``optimizer.step()`` (or ``scaler.step(optimizer)``), then
        :meth:`restore_magnitude`."""
        self.apply_magnitude(epoch, optimizer)
        optimizer_step(optimizer, scaler, then=self.restore_magnitude)

    def restore_magnitude(self) -> None:
        """``lr`` mode: put back the learning rates :meth:`apply_magnitude` scaled."""
        if self._saved_lrs is not None:
            restore_learning_rates(self._saved_lrs)
            self._saved_lrs = None

    def remove(self) -> None:
        """Take the forward hooks off the model."""
        self.observer.remove()

    def state_dict(self) -> dict[str, Any]:
        """The last scores / coefficients and the noise generators' states (plain tensors)."""
        return {
            "scores": self.scores.clone(),
            "ratios": self.ratios.clone(),
            "k": self.k.clone(),
            "calls": self.cadence.calls,
            "generators": {key: g.get_state() for key, g in self._generators.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (the noise continues where it stopped)."""
        for key in ("scores", "ratios", "k"):
            setattr(self, key, torch.as_tensor(state[key], dtype=torch.float64).clone())
        self.cadence.calls = int(state.get("calls", 0))
        for key, generator_state in state["generators"].items():
            generator = self._generator(torch.device(key))
            if generator is not None:
                generator.set_state(generator_state)
