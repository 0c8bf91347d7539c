"""An experiment, not part of the toolkit: the balancing heads' scores steering the robust recipe.

The light heads of a balancing method (joint training's monitor, CGGM, MMPareto) score each
view every step (``eps_<view>``: the true-class probability, or 1 / (1 + MAE)). Here a running
mean of those scores (momentum 0.9), turned into a relative lag ``r_i = (1 / e_i) / mean_j
(1 / e_j)`` (above 1 for a view that lags), steers the recipe, in one of two forms:

- ``"sep"``: each per-view head's loss weight is ``sep_weight * r_i``: the lagging view's encoder
  is supervised more (as PASSION weights its unimodal losses);
- ``"drop"``: each view's drop probability is ``drop / r_i``, clipped to [0.05, 0.95]: the
  dominant view is dropped more often (as OPM does).

Both were measured on the BraTS phantom and removed from the toolkit; ``bench_multiview.py``
runs them on the multi-view data through the variants ``guided_sep`` and ``guided_drop``
(``scripts/variants.py``), which replace the bundle's ``robust_step`` by :class:`GuidedStep`.
"""

from __future__ import annotations

from typing import Any

import torch

from cggm_seg.balancing import RobustTraining
from cggm_seg.balancing.robust import RobustIteration

__all__ = ["GuidedStep", "lag"]


def lag(scores: torch.Tensor) -> torch.Tensor:
    """``r_i = (1 / e_i) / mean_j (1 / e_j)`` of positive scores ``e``: 1 where all are equal."""
    inverse = 1.0 / scores.clamp_min(1e-6)
    return inverse / inverse.mean()


class GuidedStep(RobustIteration):
    """The recipe's step with per-view head weights or drop probabilities set by the heads' scores.

    Args:
        recipe, sep_heads, method: as for :meth:`RobustTraining.iteration`; ``method`` must record
            ``eps_<view>`` stats (every balancing method of the toolkit does).
        guide: ``"sep"`` or ``"drop"`` (see the module docstring).
        momentum: the running mean's momentum.
    """

    def __init__(
        self, recipe: RobustTraining, sep_heads: Any, method: Any, guide: str, momentum: float = 0.9
    ) -> None:
        super().__init__(recipe, sep_heads, method)
        if guide not in ("sep", "drop"):
            raise ValueError(f"guide must be 'sep' or 'drop', got {guide!r}.")
        if method is None:
            raise ValueError("the guided step follows a balancing method's head scores: give it one.")
        self.guide = guide
        self.momentum = float(momentum)
        self.mean: torch.Tensor | None = None

    def _lag(self) -> torch.Tensor | None:
        stats = getattr(self.method, "stats", {}) or {}
        scores = [stats.get(f"eps_{m}") for m in self.modalities]
        if any(s is None for s in scores):
            return None if self.mean is None else lag(self.mean)
        now = torch.tensor(scores, dtype=torch.float64)
        self.mean = now if self.mean is None else self.momentum * self.mean + (1 - self.momentum) * now
        return lag(self.mean)

    def _drop_probabilities(self) -> torch.Tensor:
        drop = super()._drop_probabilities()
        r = self._lag() if self.guide == "drop" else None
        return drop if r is None else (drop / r).clamp(0.05, 0.95)

    def _sep_weights(self) -> dict[str, float]:
        weights = super()._sep_weights()
        r = self._lag() if self.guide == "sep" else None
        return weights if r is None else {m: weights[m] * float(r[i]) for i, m in enumerate(self.modalities)}
