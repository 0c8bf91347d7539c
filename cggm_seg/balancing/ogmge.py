"""OGM-GE: On-the-fly Gradient Modulation with Generalisation Enhancement (Peng et al., CVPR 2022).

``docs/methods.md``. Each iteration the unimodal heads score their modality (mean true-class
probability); a modality that scores above the others is dominant and its encoder's gradient is
scaled down by ``k_m < 1``; Gaussian noise with the spread of the gradient itself (GE) restores the
stochastic-gradient noise the scaling removed. Both act only for epochs in ``[start_epoch, end_epoch)``.

Generalised to any M >= 2 (documented choice): ``rho_m = s_m / mean_{k != m} s_k``, which is the
paper's ``rho^a = sum s^a / sum s^v`` when M = 2. Branches are chosen by module, so parameters of
any tensor rank are modulated (the official code only touched 4-D gradients).

A hand-written loop::

    branches = {"audio": "encoders.audio", "visual": "encoders.visual"}
    ogm = OGMGE(alpha=0.8).bind(model, heads, branches=branches, loss_fn=loss_fn)
    for epoch in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)   # forward: hooks keep the branch features
            loss.backward()
            ogm.observe(y)                # heads step -> scores s -> k
            ogm.step(optimizer, epoch)    # grads of branch m: k_m * g + N(0, std(g)^2), then step
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from cggm_seg.balancing.branches import BranchSpec
from cggm_seg.balancing.distributed import world_size
from cggm_seg.balancing.head_trainer import HeadOptions, HeadTrainer
from cggm_seg.balancing.method import BalancingMethod, register_method
from cggm_seg.balancing.observer import Cadence

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


@register_method
class OGMGE(BalancingMethod):
    """OGM-GE for any number of modalities (see the module docstring for a hand-written loop).

    Per iteration, once bound (:meth:`bind`): ``model(x)`` (hooks keep the branch features) ->
    :meth:`observe` (the heads train one step on the detached features; their scores give k) ->
    :meth:`apply_magnitude` (inside the epoch window: branch gradients ``g <- k_m * g + h``,
    ``h ~ N(0, std(g)^2)`` per parameter tensor) -> ``optimizer.step()`` ->
    :meth:`restore_magnitude`.

    Args:
        alpha: modulation strength alpha. Defaults to 0.8 (the paper's CREMA-D value).
        continuous: use ``1 - tanh(alpha * (rho - 1))`` (continuous at rho = 1) instead of the paper's
            ``1 - tanh(alpha * rho)``. Defaults to False.
        noise: add the GE noise (OGM-GE); False gives plain OGM. Defaults to True.
        start_epoch: first epoch of the modulation window. Defaults to 0.
        end_epoch: first epoch after the window; ``None`` for no end. Defaults to 50 (the official
            0-50 of 100 epochs).
        seed: seed of the noise generator (one per device); ``None`` uses torch's global generator.
            Under DDP give a seed, so that every rank adds the same noise to its (identical) gradients.
        magnitude: ``"grad"`` (default, the paper's form: branch gradients ``k_m * g + h``; right for
            SGD) or ``"lr"`` (the branch's learning rate times ``k_m`` for the step, the GE noise
            added to the gradient: ``theta <- theta - lr * k_m * (g + h)``; survives Adam/AdamW,
            which are nearly invariant to a gradient's scale; needs an optimizer built with
            :func:`~cggm_seg.balancing.branch_param_groups`).
        observe_every: the heads train and k is recomputed at every ``observe_every``-th call of
            :meth:`observe` (the first included); the calls in between drop the captured features
            and keep the last k, which still modulates every step. Defaults to 1 (every iteration).
        head_options: the heads' :class:`~cggm_seg.balancing.HeadOptions`; the score should be a
            true-class probability (default ``"region_true_class_probability"``, segmentation;
            ``"true_class_probability"`` for classification) or another bounded score. For
            segmentation, full-resolution heads (``level=0``) rank the modalities more faithfully
            than coarser ones; ``sublattice=True`` trains them on one voxel in 8 per step.

    Attributes:
        scores: shape ``M``, the last scores s_m (averaged over ranks).
        ratios: shape ``M``, the last rho_m.
        k: shape ``M``, the last coefficients k_m.
        stats: ``s_<m>``, ``rho_<m>``, ``k_<m>``, ``head_loss_<m>`` of the last iteration as floats.

    Raises:
        ValueError: alpha < 0, an empty window, magnitude ``"off"``, or ``observe_every < 1``
            (here); when bound, heads and branches of different modalities, or noise without a
            seed under DDP.
    """

    name = "ogmge"
    default_score = "region_true_class_probability"
    stat_kinds = ("s", "rho", "k", "head_loss")
    plot_panels = (("s", "head score s_i"), ("k", "OGM coefficient k_i"))
    magnitudes = ("grad", "lr")

    def __init__(
        self,
        alpha: float = 0.8,
        continuous: bool = False,
        noise: bool = True,
        start_epoch: int = 0,
        end_epoch: int | None = 50,
        seed: int | None = None,
        magnitude: str = "grad",
        observe_every: int = 1,
        head_options: HeadOptions | None = None,
    ) -> None:
        super().__init__(magnitude, head_options)
        self.cadence = Cadence(observe_every)  # which observe() calls train the heads
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}.")
        if end_epoch is not None and end_epoch <= start_epoch:
            raise ValueError(f"the epoch window [{start_epoch}, {end_epoch}) is empty.")
        self.alpha = float(alpha)
        self.continuous = continuous
        self.noise = noise
        self.start_epoch = int(start_epoch)
        self.end_epoch = None if end_epoch is None else int(end_epoch)
        self.seed = seed
        self._generators: dict[str, torch.Generator] = {}

    def _bind(
        self,
        model: nn.Module,
        heads: HeadTrainer,
        branches: BranchSpec | None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    ) -> None:
        if self.noise and self.seed is None and world_size() > 1:
            raise ValueError(
                "OGM-GE's noise under DistributedDataParallel needs a seed: with seed=None each of the "
                f"{world_size()} ranks adds different noise to its copy of the weights, and the copies "
                "drift apart. Give OGMGE(seed=...) (the bundles pass @seed)."
            )
        m = len(self.modalities)
        self.scores = torch.full((m,), math.nan, dtype=torch.float64)
        self.ratios = torch.full((m,), math.nan, dtype=torch.float64)
        self.k = torch.ones(m, dtype=torch.float64)

    @property
    def observe_every(self) -> int:
        """Calls from one observation to the next."""
        return self.cadence.every

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "magnitude": self.magnitude.mode,
            "alpha": self.alpha,
            "continuous": self.continuous,
            "noise": self.noise,
            "start_epoch": self.start_epoch,
            "end_epoch": self.end_epoch,
            "seed": self.seed,
            "observe_every": self.observe_every,
        }

    def in_window(self, epoch: int) -> bool:
        """True when ``epoch`` is in ``[start_epoch, end_epoch)``."""
        return epoch >= self.start_epoch and (self.end_epoch is None or epoch < self.end_epoch)

    def _observe(self, target: torch.Tensor) -> None:
        """Train the heads one step on the captured features and compute k from their scores
        (between two observations, see ``observe_every``, only drop the features: the last k stands)."""
        if not self.cadence.tick():
            self.observer.clear()
            return
        seen = self.observer.observe(target)
        self.scores = seen.scores
        self.ratios = discrepancy_ratios(self.scores)
        self.k = ogm_coefficients(self.ratios, self.alpha, self.continuous)
        self.stats = {}
        for name, values in (("s", self.scores), ("rho", self.ratios), ("k", self.k)):
            self.stats.update({f"{name}_{m}": float(v) for m, v in zip(self.modalities, values)})
        self.stats.update(seen.stats)

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def apply_magnitude(self, optimizer: torch.optim.Optimizer | None = None, epoch: int = 0) -> None:
        """Inside the epoch window, ``g <- k_m * g + h`` for every gradient of branch m (``grad``), or
        ``g <- g + h`` and the branch's learning rate times ``k_m`` (``lr``; call
        :meth:`restore_magnitude` after the step, :meth:`step` does both).

        ``h ~ N(0, std(g)^2)`` elementwise, with std the (unbiased) standard deviation of that
        parameter tensor's gradient before scaling: the official isotropic approximation of
        ``N(0, Sigma_sgd)`` (0 for one-element tensors). Outside the window nothing changes.

        Args:
            optimizer: the optimizer (required in ``lr`` mode; checked once).
            epoch: the current epoch (0-based, as the window).

        Raises:
            ValueError: ``lr`` mode without an optimizer, or one not built by ``branch_param_groups``.
        """
        if not self.in_window(epoch):
            return
        grad_mode = self.magnitude.mode == "grad"
        if grad_mode:
            self.magnitude.check(optimizer)
        else:
            self.magnitude.scale_learning_rates(optimizer, dict(zip(self.modalities, self.k.tolist())))
        for modality, params in self.params_by_modality.items():
            factor = float(self.k[self.modalities.index(modality)]) if grad_mode else 1.0
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
