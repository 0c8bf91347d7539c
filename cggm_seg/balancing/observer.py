"""Watching each branch of a multimodal network through its light head: the one observe step.

CGGM, OGM-GE, the joint baseline's monitor and the test report all see the modalities the same
way: forward hooks keep each branch's output, the light heads train one step on those features
(or only predict, at test time), and the heads' scores are averaged over ranks. This module owns
that sequence; the methods only turn the scores into their coefficients.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cggm_seg.balancing.branches import BranchSpec, FeatureTap
from cggm_seg.balancing.distributed import mean_over_ranks
from cggm_seg.balancing.head_trainer import HeadStep, HeadTrainer

__all__ = ["Observation", "HeadObserver", "Cadence", "check_observe_every"]


def check_observe_every(observe_every: int) -> None:
    """Raises ValueError unless ``observe_every`` is an integer >= 1."""
    if int(observe_every) != observe_every or observe_every < 1:
        raise ValueError(f"observe_every must be an integer >= 1, got {observe_every!r}.")


class Cadence:
    """Which calls of a method observe through the heads: the first, then every ``every``-th.

    A cost knob of CGGM and OGM-GE: the heads' step is most of what they cost, and between two
    observations their coefficients stand.

    Args:
        every: calls from one observation to the next (>= 1).

    Attributes:
        calls: calls so far (checkpointed by the methods).
    """

    def __init__(self, every: int = 1) -> None:
        check_observe_every(every)
        self.every = int(every)
        self.calls = 0

    @property
    def due(self) -> bool:
        """Whether the next call observes."""
        return self.calls % self.every == 0

    def tick(self) -> bool:
        """Count one call; return whether it observes."""
        due = self.due
        self.calls += 1
        return due


@dataclass
class Observation:
    """What one :meth:`HeadObserver.observe` measured.

    Attributes:
        step: the heads' :class:`HeadStep` (this rank's scores and losses, rank-mean final gradients).
        scores: shape ``M``, float64 on the CPU: each head's score on this batch, averaged over
            ranks, in :attr:`HeadObserver.modalities` order.
        stats: ``head_loss_<m>`` of every modality as floats.
    """

    step: HeadStep
    scores: torch.Tensor
    stats: dict[str, float]


class HeadObserver:
    """Forward hooks on the branches (and optionally the fused final layer) plus the light heads.

    Training use, per iteration: ``model(x)`` (the hooks keep the branch outputs) ->
    :meth:`observe` (the heads train one step on the detached features; the tap is cleared).
    Test use: ``model(x)`` -> :meth:`predict` (the heads' logits; nothing trains).

    Use it as a context manager, or call :meth:`remove`, to take every hook off the model.

    Args:
        model: the multimodal network.
        heads: a :class:`HeadTrainer` (to train and predict) or modality -> head modules (to
            predict only); one head per branch.
        branches: modality -> encoder module name(s) / module(s) (``None``: ``model.branch_names()``).
        final: name or module of the fused final layer whose input to keep (CGGM's direction
            term); ``None`` for none.
        keep_without_grad: also keep features from forwards run without gradients (test-time
            prediction under ``torch.no_grad``). Defaults to False: a validation pass between two
            training iterations then leaves the training batch's features in place.

    Raises:
        ValueError: heads and branches that cover different modalities.
    """

    def __init__(
        self,
        model: nn.Module,
        heads: HeadTrainer | Mapping[str, nn.Module],
        branches: BranchSpec | None = None,
        final: str | nn.Module | None = None,
        keep_without_grad: bool = False,
    ) -> None:
        self.trainer = heads if isinstance(heads, HeadTrainer) else None
        self.heads: dict[str, nn.Module] = dict(heads.heads if isinstance(heads, HeadTrainer) else heads)
        self.tap = FeatureTap(model, branches, final=final, keep_without_grad=keep_without_grad)
        if set(self.heads) != set(self.tap.branches):
            self.tap.remove()
            raise ValueError(
                f"the heads cover {sorted(self.heads)}, the branches {sorted(self.tap.branches)}."
            )
        self.modalities = tuple(self.tap.branches)

    @property
    def final_input(self) -> torch.Tensor | None:
        """The fused final layer's input at the last forward (``None`` without ``final``)."""
        return self.tap.final_input

    def observe(self, target: torch.Tensor) -> Observation:
        """Train the heads one step on the captured features, then clear the tap.

        Args:
            target: this batch's target, as the heads' loss takes it.

        Raises:
            RuntimeError: the observer was built without a :class:`HeadTrainer`, or no forward ran.
        """
        if self.trainer is None:
            raise RuntimeError("this observer only predicts: give it a HeadTrainer to train the heads.")
        step = self.trainer.step(self.tap.features, target)
        self.tap.clear_features()
        raw = torch.tensor([float(step.scores[m]) for m in self.modalities], dtype=torch.float64)
        stats = {f"head_loss_{m}": float(step.losses[m]) for m in self.modalities}
        return Observation(step=step, scores=mean_over_ranks(raw), stats=stats)

    def predict(self, spatial_size: list[int] | None = None) -> dict[str, torch.Tensor]:
        """Each head's logits on the captured features (no training), then clear the tap.

        Args:
            spatial_size: the output size given to heads whose branch returns a list of maps
                (segmentation heads on a multi-scale encoder); ``None``: the head's default.
        """
        features = self.tap.features
        self.tap.clear_features()
        out = {}
        for m in self.modalities:
            f = features[m]
            use_size = spatial_size is not None and isinstance(f, (list, tuple))
            out[m] = self.heads[m](f, spatial_size) if use_size else self.heads[m](f)
        return out

    def clear(self) -> None:
        """Drop every kept tensor (features and the final layer's input)."""
        self.tap.clear()

    def remove(self) -> None:
        """Take every hook off the model and drop the kept tensors."""
        self.tap.remove()

    def __enter__(self) -> HeadObserver:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()
