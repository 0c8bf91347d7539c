"""Training the light unimodal heads that CGGM and OGM-GE observe the modalities through.

Each modality has a light head f_i that predicts the task from its encoder's features alone
(METHOD.md 1.1.1, 1.3). The heads learn from *detached* features with their own loss and their own
optimizer: they observe the encoders and never push gradients into them. Each head has a final
layer ``head.final`` shaped like the fused model's final layer, so that CGGM's direction term can
compare like with like.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cggm_seg.balancing.branches import detach_features
from cggm_seg.balancing.scores import ScoreFn, get_score

__all__ = ["HeadStep", "HeadTrainer", "flat_parameters", "flat_gradients"]


def flat_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of a final layer in a fixed order (``weight`` then ``bias`` for Conv/Linear)."""
    return list(module.parameters())


def flat_gradients(module: nn.Module) -> torch.Tensor:
    """The gradients of ``module``'s parameters, flattened and concatenated (a detached copy).

    Raises:
        RuntimeError: a parameter has no gradient.
    """
    grads = []
    for name, p in module.named_parameters():
        if p.grad is None:
            raise RuntimeError(
                f"the final layer's {name!r} has no gradient: is the head's `final` used in forward?"
            )
        grads.append(p.grad.detach().reshape(-1))
    return torch.cat(grads).clone()


@dataclass
class HeadStep:
    """What one :meth:`HeadTrainer.step` measured, per modality.

    Attributes:
        scores: 0-dim float tensors, the task score eps_i of each head on this batch (before its update).
        losses: 0-dim detached tensors, each head's loss.
        final_grads: flattened gradient of each head's ``final`` layer (weight then bias) w.r.t. its
            own loss, copied before the head's optimizer step.
        final_weights: flattened ``final`` weights (weight then bias) before the step.
    """

    scores: dict[str, torch.Tensor]
    losses: dict[str, torch.Tensor]
    final_grads: dict[str, torch.Tensor]
    final_weights: dict[str, torch.Tensor]


class HeadTrainer:
    """Runs one training step of every unimodal head on detached branch features.

    Args:
        heads: modality -> head module (a dict or ``nn.ModuleDict``); each head maps its branch's
            features (as the branch outputs them) to a prediction shaped like the fused model's
            output, and has a final layer attribute ``final``.
        loss_fn: ``loss_fn(prediction, target) -> scalar``, the heads' task loss (usually the fused loss).
        optimizer: the heads' own optimizer over the heads' parameters (nothing else).
        score_fn: the task score (name from :data:`cggm_seg.balancing.scores.SCORES` or a callable
            ``(prediction, target) -> 0-dim tensor``). Defaults to ``"soft_dice"``.

    Raises:
        ValueError: fewer than two heads, a head without ``final``, or heads sharing parameters.
    """

    def __init__(
        self,
        heads: Mapping[str, nn.Module] | nn.ModuleDict,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        score_fn: str | ScoreFn = "soft_dice",
    ) -> None:
        self.heads: dict[str, nn.Module] = dict(heads.items())
        if len(self.heads) < 2:
            raise ValueError(f"need one head per modality (at least two), got {list(self.heads)}.")
        owner: dict[int, str] = {}
        for modality, head in self.heads.items():
            if not isinstance(getattr(head, "final", None), nn.Module):
                raise ValueError(f"head {modality!r} has no final layer attribute `final` (an nn.Module).")
            for p in head.parameters():
                if owner.setdefault(id(p), modality) != modality:
                    raise ValueError(f"heads {owner[id(p)]!r} and {modality!r} share parameters.")
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.score_fn = get_score(score_fn)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities, in the heads' order."""
        return tuple(self.heads)

    def step(self, features: Mapping[str, Any], target: torch.Tensor) -> HeadStep:
        """Train every head once on detached ``features`` and report scores and final-layer gradients.

        Args:
            features: modality -> branch output (e.g. :attr:`FeatureTap.features`); detached here.
            target: the batch's target, as the task loss takes it (e.g. ``B x 3 x D x H x W`` regions).

        Returns:
            The :class:`HeadStep` of this batch.

        Raises:
            KeyError: a modality without features.
        """
        target = target.detach()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            predictions = {m: head(detach_features(features[m])) for m, head in self.heads.items()}
            losses = {m: self.loss_fn(pred, target) for m, pred in predictions.items()}
            # The heads share no parameter, so one backward of the sum gives each head the
            # gradient of its own loss.
            torch.stack([loss.reshape(()) for loss in losses.values()]).sum().backward()
        final_grads = {m: flat_gradients(head.final) for m, head in self.heads.items()}
        final_weights = {
            m: torch.cat([p.detach().reshape(-1) for p in flat_parameters(head.final)]).clone()
            for m, head in self.heads.items()
        }
        self.optimizer.step()
        scores = {m: self.score_fn(pred.detach(), target) for m, pred in predictions.items()}
        return HeadStep(
            scores=scores,
            losses={m: loss.detach() for m, loss in losses.items()},
            final_grads=final_grads,
            final_weights=final_weights,
        )
