"""The joint-training baseline's observer: per-modality head scores, no modulation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from cggm_seg.balancing.branches import BranchSpec, FeatureTap
from cggm_seg.balancing.distributed import mean_over_ranks
from cggm_seg.balancing.heads import HeadTrainer

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
        self.tap = FeatureTap(model, branches)
        if set(heads.modalities) != set(self.tap.branches):
            raise ValueError(
                f"the heads cover {sorted(heads.modalities)}, the branches {sorted(self.tap.branches)}."
            )
        self.heads = heads
        self.modalities = tuple(self.tap.branches)
        self.stats: dict[str, float] = {}

    def observe(self, target: torch.Tensor) -> dict[str, float]:
        """Train the heads one step on the captured features; return (and keep) the stats."""
        step = self.heads.step(self.tap.features, target)
        self.tap.clear()
        scores = mean_over_ranks(
            torch.tensor([float(step.scores[m]) for m in self.modalities], dtype=torch.float64)
        )
        self.stats = {f"eps_{m}": float(s) for m, s in zip(self.modalities, scores)}
        self.stats.update({f"head_loss_{m}": float(v) for m, v in step.losses.items()})
        return self.stats

    def remove(self) -> None:
        """Take the forward hooks off the model."""
        self.tap.remove()

    def state_dict(self) -> dict[str, Any]:
        """Nothing to keep beyond the heads and their optimizer (checkpointed by their owner)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore (see :meth:`state_dict`)."""
