"""MMPareto (Wei and Hu, ICML 2024): each encoder steps along a Pareto-fair mix of the fused loss's
gradient and its own unimodal loss's gradient.

Per encoder m, with ``g = grad_{theta_m} L_fused`` and ``u = grad_{theta_m} L_m`` (its own head's
loss, the head trained on the encoder's features, not detached):

- ``cos(g, u) >= 0``: equal weights, ``h = (g + u) / 2``;
- ``cos(g, u) < 0``: the two-task min-norm weights ``a* = argmin_{a in [0, 1]} ||a g + (1 - a) u||``,
  ``a* = clip(((u - g) . u) / ||g - u||^2, 0, 1)``, ``h = a* g + (1 - a*) u``;
- then ``h`` is rescaled to ``||g + u||`` where that is larger (the plain sum's step size), and
  multiplied by ``scale`` (1.5 in the authors' code).

The unimodal losses need per-sequence heads whose loss reaches the encoders: the robust-training
step's per-sequence heads (``RobustTraining(sep_weight > 0)``), which computes ``g`` and ``u`` with
two backward passes and hands them to :meth:`MMPareto.combine` (``docs/methods.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from cggm_seg.balancing.head_trainer import HeadOptions
from cggm_seg.balancing.method import BalancingMethod, register_method

__all__ = ["MMPareto", "min_norm_weight", "pareto_combine"]


def min_norm_weight(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``a* = argmin_{a in [0, 1]} ||a g + (1 - a) u||^2 = clip(((u - g) . u) / ||g - u||^2, 0, 1)``
    (0.5 when ``g == u``)."""
    diff = g - u
    denominator = diff.dot(diff)
    if float(denominator) == 0.0:
        return torch.tensor(0.5, dtype=g.dtype, device=g.device)
    return ((u - g).dot(u) / denominator).clamp(0.0, 1.0)


def pareto_combine(g: torch.Tensor, u: torch.Tensor, scale: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """MMPareto's gradient of one encoder from its fused-loss gradient ``g`` and unimodal-loss
    gradient ``u`` (flat vectors); returns ``(h, cos(g, u))``."""
    g, u = g.double(), u.double()
    norms = g.norm() * u.norm()
    cos = g.dot(u) / norms if float(norms) > 0 else torch.zeros((), dtype=torch.float64, device=g.device)
    a = torch.tensor(0.5, dtype=torch.float64, device=g.device) if float(cos) >= 0 else min_norm_weight(g, u)
    h = a * g + (1 - a) * u
    total, length = (g + u).norm(), h.norm()
    if float(total) > float(length) > 0:
        h = h * (total / length)
    return scale * h, cos


@register_method
class MMPareto(BalancingMethod):
    """MMPareto: per encoder, the fused and the unimodal gradient combined Pareto-fairly.

    The light heads observe the encoders as for joint training (their scores ``eps_<m>``); the
    combination needs a robust-training recipe with per-sequence heads (``sep_weight > 0``),
    whose step calls :meth:`combine`.

    Args:
        scale: the factor the combined gradient is multiplied by (1.5 in the authors' code).
        head_options: the observing heads' :class:`~cggm_seg.balancing.HeadOptions`.

    Attributes:
        stats: ``eps_<m>``, ``head_loss_<m>`` and ``cos_<m>`` (the cosine of the last combination).
    """

    name = "mmpareto"
    default_score = "soft_dice"
    stat_kinds = ("eps", "cos", "head_loss")
    plot_panels = (("eps", "head score eps_i (per batch)"), ("cos", "cos(fused, unimodal gradient)"))
    magnitudes = ("off",)
    #: the robust-training step hands this method each encoder's two gradients
    combines_gradients = True

    def __init__(self, scale: float = 1.5, head_options: HeadOptions | None = None) -> None:
        super().__init__("off", head_options)
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}.")
        self.scale = float(scale)
        self.cosines: dict[str, float] = {}

    @property
    def settings(self) -> dict[str, Any]:
        return {"scale": self.scale}

    def _observe(self, target: torch.Tensor) -> None:
        seen = self.observer.observe(target)
        self.stats = {f"eps_{m}": float(s) for m, s in zip(self.modalities, seen.scores)}
        self.stats.update({f"cos_{m}": self.cosines.get(m, float("nan")) for m in self.modalities})
        self.stats.update(seen.stats)

    def after_backward(self, scale: float = 1.0) -> bool:
        """Nothing to add; refuses a run whose step never combined gradients (no robust-training
        step with per-sequence heads: MMPareto would silently be joint training).

        Raises:
            RuntimeError: :meth:`combine` has not been called before this iteration's end.
        """
        if not self.cosines:
            raise RuntimeError(
                "MMPareto combines each encoder's fused and unimodal gradients in the robust-training "
                "step: train with a recipe that has per-sequence heads (bundle: --method mmpareto "
                "--recipe sep; in code: RobustTraining(sep_weight=1.0, ...).iteration(heads, method))."
            )
        return True

    def combine(
        self, fused: Mapping[str, torch.Tensor], unimodal: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Each encoder's MMPareto gradient (flat, in the fused gradient's dtype) from its
        fused-loss and unimodal-loss gradients (flat vectors, modality -> tensor)."""
        out: dict[str, torch.Tensor] = {}
        for m, g in fused.items():
            h, cos = pareto_combine(g, unimodal[m], self.scale)
            out[m] = h.to(g.dtype)
            self.cosines[m] = float(cos)
        return out
