"""The joint-training baseline as a method: the heads observe, nothing is modulated."""

from __future__ import annotations

import torch

from cggm_seg.balancing.head_trainer import HeadOptions
from cggm_seg.balancing.method import BalancingMethod, register_method

__all__ = ["HeadMonitor"]


@register_method
class HeadMonitor(BalancingMethod):
    """Plain joint training, observed through the same light heads as CGGM and OGM-GE.

    Nothing of the network's training changes: the heads train on the detached branch features and
    report their scores, so that each modality head can be compared across methods.

    Args:
        head_options: the heads' :class:`~cggm_seg.balancing.HeadOptions` (score ``"soft_dice"``
            unless given).

    Attributes:
        stats: ``eps_<m>`` (the head's score on this batch, averaged over ranks) and ``head_loss_<m>``.
    """

    name = "joint"
    state_key = "monitor"
    default_score = "soft_dice"
    stat_kinds = ("eps", "head_loss")
    plot_panels = (("eps", "head score eps_i (per batch)"),)
    magnitudes = ("off",)

    def __init__(self, head_options: HeadOptions | None = None) -> None:
        super().__init__("off", head_options)

    def _observe(self, target: torch.Tensor) -> None:
        seen = self.observer.observe(target)
        self.stats = {f"eps_{m}": float(s) for m, s in zip(self.modalities, seen.scores)}
        self.stats.update(seen.stats)
