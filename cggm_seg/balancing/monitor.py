"""The joint-training baseline's observer: per-modality head scores, no modulation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from cggm_seg.balancing.branches import BranchSpec
from cggm_seg.balancing.heads import HeadTrainer
from cggm_seg.balancing.observer import HeadObserver

__all__ = ["HeadMonitor"]


class HeadMonitor:
    """Trains the light heads on the detached branch features and reports their scores.

    Nothing of the network's training changes: this is plain joint training, observed through the
    same heads as CGGM and OGM-GE, so that the three methods can be compared head for head.

    Per iteration: ``model(x)`` (hooks keep the branch features) -> :meth:`observe`.

    Args:
        model: the multimodal network.
        heads: the :class:`HeadTrainer` of the unimodal heads.
        branches: modality -> encoder module name(s) / module(s) (``None``: ``model.branch_names()``).

    Attributes:
        stats: ``eps_<m>`` (the head's score on this batch, averaged over ranks) and ``head_loss_<m>``.
    """

    def __init__(self, model: nn.Module, heads: HeadTrainer, branches: BranchSpec | None = None) -> None:
        self.observer = HeadObserver(model, heads, branches)
        self.heads = heads
        self.modalities = self.observer.modalities
        self.stats: dict[str, float] = {}

    def observe(self, target: torch.Tensor) -> dict[str, float]:
        """Train the heads one step on the captured features; return (and keep) the stats."""
        seen = self.observer.observe(target)
        self.stats = {f"eps_{m}": float(s) for m, s in zip(self.modalities, seen.scores)}
        self.stats.update(seen.stats)
        return self.stats

    def remove(self) -> None:
        """Take the forward hooks off the model."""
        self.observer.remove()

    def state_dict(self) -> dict[str, Any]:
        """Nothing to keep beyond the heads and their optimizer (checkpointed by their owner)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore (see :meth:`state_dict`)."""
