"""Training the light unimodal heads that CGGM and OGM-GE observe the modalities through.

Each modality has a light head f_i that predicts the task from its encoder's features alone
(``docs/methods.md``). The heads learn from *detached* features with their own loss and their own
optimizer: they observe the encoders and never push gradients into them. Each head has a final
layer ``head.final`` shaped like the fused model's final layer, so that CGGM's direction term can
compare like with like.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from cggm_seg.balancing.branches import detach_features
from cggm_seg.balancing.distributed import collective_device, mean_over_ranks, world_size
from cggm_seg.balancing.scores import ScoreFn, get_score

__all__ = [
    "HeadOptions",
    "HeadStep",
    "HeadTrainer",
    "as_head_trainer",
    "check_offset",
    "check_sublattice_heads",
    "flat_parameters",
    "flat_gradients",
    "pool_sublattice",
    "pool_target",
    "sublattice_of",
    "sublattice_offset",
]


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


def no_autocast(device: torch.device) -> Any:
    """A context that turns autocast off for ``device``'s type."""
    kind = device.type if device.type in ("cuda", "cpu", "xpu", "mps") else "cpu"
    return torch.autocast(device_type=kind, enabled=False)


def _broadcast_from_rank0(tensors: list[torch.Tensor]) -> None:
    """Overwrite ``tensors`` in place with rank 0's values (a collective: every rank calls it)."""
    if not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1).to(collective_device()) for t in tensors])
    dist.broadcast(flat, src=0)
    offset = 0
    with torch.no_grad():
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def _average_gradients(params: list[nn.Parameter]) -> None:
    """Replace each parameter's gradient by its mean over ranks, as DDP does for a network.

    A parameter without a gradient on this rank takes part with zeros (so that every rank reduces
    the same tensor) and receives the mean, like a parameter DDP finds unused on one rank.
    """
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    mean = mean_over_ranks(torch.cat([g.detach().reshape(-1) for g in grads]))
    offset = 0
    for p in params:
        p.grad = mean[offset : offset + p.numel()].view_as(p).to(p.dtype).clone()
        offset += p.numel()


def pool_target(target: torch.Tensor, size: list[int] | tuple[int, ...]) -> torch.Tensor:
    """A dense target pooled to ``size``, for a head that predicts at a coarser level.

    Floating-point targets (region masks, soft labels) are averaged over each block of voxels, so
    a coarse voxel's target is the fraction of it inside the region (what a Dice loss or score
    takes as a soft label); integer targets (class indices) take each block's first voxel
    (nearest-neighbour), since averaging class indices means nothing. Boolean masks are averaged
    as floats.

    Args:
        target: ``B x C x *spatial``.
        size: the coarse spatial size; each of ``target``'s spatial sizes must be an integer
            multiple of it.

    Raises:
        ValueError: a size that does not divide the target's.
    """
    if [int(s) for s in size] == [int(s) for s in target.shape[2:]]:
        return target
    return _pooled_blocks(target, size, (0,) * len(size), step=1)


def _pooled_blocks(
    target: torch.Tensor, size: list[int] | tuple[int, ...], offset: tuple[int, ...], step: int
) -> torch.Tensor:
    """The voxels ``offset + step * u`` of ``target`` pooled to ``size`` (:func:`pool_target`), from
    their blocks only: block means (floating-point, boolean) or first voxels (integer)."""
    spatial = [int(s) for s in target.shape[2:]]
    size = [int(s) for s in size]
    if len(size) != len(spatial) or any(c < 1 or t % c for t, c in zip(spatial, size)):
        raise ValueError(
            f"cannot pool a target of spatial size {spatial} to {size}: each size must divide the "
            "target's (a coarse head's level must halve the label an integer number of times)."
        )
    factors = [t // c for t, c in zip(spatial, size)]
    if target.is_floating_point() or target.dtype == torch.bool:
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}.get(len(size))
        if pool is not None:
            start = target[(slice(None), slice(None), *(slice(o * f, None) for o, f in zip(offset, factors)))]
            start = start.float() if start.dtype == torch.bool else start
            return pool(start, factors, stride=[step * f for f in factors])
    return target[
        (slice(None), slice(None), *(slice(o * f, None, step * f) for o, f in zip(offset, factors)))
    ]


def check_sublattice_heads(heads: Mapping[str, nn.Module]) -> None:
    """Raises ValueError unless every head can be trained on a sub-lattice (``sublattice=True``): a
    segmentation head with ``forward_sublattice`` that can compute its logits there exactly
    (:attr:`cggm_seg.networks.SegmentationHead.supports_sublattice`)."""
    for modality, head in heads.items():
        exact = callable(getattr(head, "forward_sublattice", None)) and getattr(
            head, "supports_sublattice", True
        )
        if not exact:
            detail = ", ".join(
                f"{a} {getattr(head, a)!r}" for a in ("level", "stride", "interp_mode") if hasattr(head, a)
            )
            raise ValueError(
                "sublattice=True trains segmentation heads on a sub-lattice of their output grid: head "
                f"{modality!r} ({type(head).__name__}{', ' + detail if detail else ''}) cannot be (build "
                "the heads with make_heads('segmentation', model), nearest-neighbour upsampling, stride 1 "
                "at level 0)."
            )


def check_offset(offset: Any, dims: int) -> tuple[int, ...]:
    """``offset`` as a tuple of ints, checked: one 0 or 1 per spatial dimension (``dims``).

    Raises:
        ValueError: anything else (another length, 2, -1, 0.5, ...).
    """
    if (
        not isinstance(offset, (tuple, list))
        or len(offset) != dims
        or any(isinstance(o, bool) or o not in (0, 1) for o in offset)
    ):
        raise ValueError(f"offset must be one 0 or 1 per spatial dimension ({dims}), got {offset}.")
    return tuple(int(o) for o in offset)


def sublattice_offset(step: int, dims: int) -> tuple[int, ...]:
    """The offset of step ``step``'s sub-lattice (:class:`HeadTrainer` with ``sublattice=True``): the
    first ``dims`` binary digits of ``step``, lowest first (3D: ``(t mod 2, t // 2 mod 2, t // 4 mod 2)``)."""
    return tuple((int(step) >> d) & 1 for d in range(dims))


def sublattice_of(target: torch.Tensor, offset: tuple[int, ...]) -> torch.Tensor:
    """The voxels ``offset + 2 * u`` of a dense ``B x C x *spatial`` target.

    Raises:
        ValueError: a target with no spatial dimension or one of odd size, an offset that is not one
            0 or 1 per spatial dimension.
    """
    spatial = [int(s) for s in target.shape[2:]]
    if not spatial or any(s % 2 for s in spatial):
        raise ValueError(
            f"a sub-lattice of step 2 needs a dense target B x C x {' x '.join('S' * len(offset))} with even "
            f"sizes, got a target of shape {list(target.shape)}."
        )
    offset = check_offset(offset, len(spatial))
    return target[(slice(None), slice(None), *(slice(o, None, 2) for o in offset))]


def pool_sublattice(
    target: torch.Tensor, size: list[int] | tuple[int, ...], offset: tuple[int, ...]
) -> torch.Tensor:
    """``sublattice_of(pool_target(target, size), offset)``, pooling only the blocks it keeps.

    The target of a coarse head trained on a sub-lattice (:class:`HeadTrainer` with
    ``sublattice=True`` and ``level > 0``): each kept voxel ``offset + 2 * u`` of the coarse grid is
    the mean (floating-point and boolean targets) or the first voxel (integer targets) of its block
    of the full-resolution target, as :func:`pool_target` computes it, for an eighth of the work in 3D.

    Raises:
        ValueError: a size that does not divide the target's, or an odd coarse size.
    """
    if [int(s) for s in size] == [int(s) for s in target.shape[2:]]:
        return sublattice_of(target, offset)
    offset = check_offset(offset, len(size))
    if any(int(c) % 2 for c in size):
        raise ValueError(
            f"a sub-lattice of step 2 needs a coarse grid of even sizes, got {[int(c) for c in size]}."
        )
    return _pooled_blocks(target, size, offset, step=2)


def _check_prediction(modality: str, prediction: Any, target: torch.Tensor) -> None:
    """A head's output must be a tensor with the target's batch size and, for dense targets of the
    same rank, the target's spatial size (segmentation heads predict at the label's resolution)."""
    if not isinstance(prediction, torch.Tensor):
        raise TypeError(f"head {modality!r} returned {type(prediction).__name__}; expected a tensor.")
    if prediction.shape[0] != target.shape[0]:
        raise ValueError(
            f"head {modality!r} returned batch size {prediction.shape[0]} for a batch of {target.shape[0]} "
            f"(prediction {list(prediction.shape)}, target {list(target.shape)})."
        )
    if prediction.dim() == target.dim() >= 3 and prediction.shape[2:] != target.shape[2:]:
        raise ValueError(
            f"head {modality!r} predicts {list(prediction.shape)} for a target of {list(target.shape)}: a "
            "segmentation head must return logits at the label's spatial size."
        )


@dataclass
class HeadStep:
    """What one :meth:`HeadTrainer.step` measured, per modality.

    Attributes:
        scores: 0-dim float tensors, the task score eps_i of each head on this batch (before its update).
        losses: 0-dim detached tensors, each head's loss.
        final_grads: flattened gradient of each head's ``final`` layer (weight then bias) w.r.t. its
            own loss, copied before the head's optimizer step (under DDP: averaged over ranks).
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
        sublattice: train and score segmentation heads on one voxel in 2^d of their output grid
            (d spatial dimensions) per step: step t takes the voxels ``o + 2 * u`` with the offset
            ``o`` the binary digits of t (``o = (t mod 2, t // 2 mod 2, t // 4 mod 2)`` in 3D), so
            that 2^d consecutive steps cover every voxel once. A head's logits there come from its
            ``forward_sublattice`` (:meth:`cggm_seg.networks.SegmentationHead.forward_sublattice`:
            the same numbers as its logits on the whole grid at those voxels), its loss and score
            from the target at those voxels: the full-resolution label for a full-resolution head,
            the label pooled to a coarse head's grid (:func:`pool_sublattice`, only the voxels
            kept) otherwise. Defaults to False.

    Attributes:
        steps: the steps taken so far (the next step's sub-lattice; the handlers save it).

    Under an initialised ``torch.distributed`` process group with more than one rank, the heads'
    parameters and buffers are set to rank 0's here, and every :meth:`step` averages the heads'
    gradients over ranks before the optimizer step: both are collectives, so every rank must
    construct the trainer and call :meth:`step` the same number of times (as with DDP).

    Raises:
        ValueError: fewer than two heads, a head without ``final``, heads sharing parameters, or
            ``sublattice`` with a head that has no ``forward_sublattice`` or cannot compute it
            exactly (``supports_sublattice``).
    """

    def __init__(
        self,
        heads: Mapping[str, nn.Module] | nn.ModuleDict,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        score_fn: str | ScoreFn = "soft_dice",
        sublattice: bool = False,
    ) -> None:
        self.sublattice = bool(sublattice)
        self.steps = 0
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
        if self.sublattice:
            check_sublattice_heads(self.heads)
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.score_fn = get_score(score_fn)
        self._trainable = [p for head in self.heads.values() for p in head.parameters() if p.requires_grad]
        if world_size() > 1:
            # Like DDP's construction: every rank starts from the same heads.
            _broadcast_from_rank0(
                [t for head in self.heads.values() for t in (*head.parameters(), *head.buffers())]
            )

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities, in the heads' order."""
        return tuple(self.heads)

    def offset(self, dims: int) -> tuple[int, ...]:
        """The sub-lattice offset of the next :meth:`step` (see ``sublattice``)."""
        return sublattice_offset(self.steps, dims)

    def step(self, features: Mapping[str, Any], target: torch.Tensor) -> HeadStep:
        """Train every head once on detached ``features`` and report scores and final-layer gradients.

        Under DDP the gradients are averaged over ranks first (see the class docstring): the heads
        step alike on every rank and ``final_grads`` are the rank means, while ``scores`` and
        ``losses`` stay this rank's (the balance tracker averages the scores itself).

        Args:
            features: modality -> branch output (e.g. :attr:`FeatureTap.features`); detached here.
            target: the batch's target, as the task loss takes it (e.g. ``B x 3 x D x H x W`` regions).

        Returns:
            The :class:`HeadStep` of this batch.

        Raises:
            KeyError: a modality without features.
        """
        target = original = target.detach()
        offset = self.offset(target.dim() - 2) if self.sublattice else None
        if offset is not None:
            target = sublattice_of(target, offset)  # full-resolution heads' target; checks the sizes
        pooled: dict[tuple[int, ...], torch.Tensor] = {}  # the target at each coarse head's grid
        self.optimizer.zero_grad(set_to_none=True)
        scores: dict[str, torch.Tensor] = {}
        losses: dict[str, torch.Tensor] = {}
        for m, head in self.heads.items():
            # One head at a time (they share no parameter, so each gets its own loss's gradient):
            # only one head's graph is alive at once. In float32 outside any autocast region (the
            # trainer's AMP covers the loss event where this runs): per-voxel Dice gradients
            # underflow in float16, and the heads have no GradScaler of their own.
            with torch.enable_grad(), no_autocast(target.device):
                try:
                    inputs = detach_features(features[m], float32=True)
                    prediction = head(inputs) if offset is None else head.forward_sublattice(inputs, offset)
                except (ValueError, RuntimeError, TypeError) as err:
                    raise type(err)(f"head {m!r}: {err}") from err
                head_target = target
                coarse = getattr(head, "level", 0) and isinstance(prediction, torch.Tensor)
                if coarse and prediction.dim() > 2:
                    size = tuple(int(s) for s in prediction.shape[2:])
                    if size not in pooled:
                        try:
                            if offset is None:
                                pooled[size] = pool_target(target, size)
                            else:  # the coarse grid is twice the sub-lattice; pool that grid's sub-lattice
                                grid = [2 * s for s in size]
                                pooled[size] = pool_sublattice(original, grid, offset)
                        except ValueError as err:
                            raise ValueError(f"head {m!r} (level {head.level}): {err}") from err
                    head_target = pooled[size]
                _check_prediction(m, prediction, head_target)
                loss = self.loss_fn(prediction, head_target).mean()  # reduction="none": the trainer reduces
                loss.backward()
                scores[m] = self.score_fn(prediction.detach(), head_target)  # before the head's update
            losses[m] = loss.detach()
        if world_size() > 1:
            _average_gradients(self._trainable)
        final_grads = {m: flat_gradients(head.final) for m, head in self.heads.items()}
        final_weights = {
            m: torch.cat([p.detach().reshape(-1) for p in flat_parameters(head.final)]).clone()
            for m, head in self.heads.items()
        }
        self.optimizer.step()
        self.steps += 1
        return HeadStep(
            scores=scores,
            losses=losses,
            final_grads=final_grads,
            final_weights=final_weights,
        )


@dataclass
class HeadOptions:
    """How a method's light heads are built and trained: one object a bundle builds with ``_target_``.

    Args:
        score: the heads' score (a name in :data:`cggm_seg.balancing.SCORES` or a callable);
            ``None`` takes the method's ``default_score``.
        lr: learning rate of the heads' default optimizer (``Adam``). Defaults to 1e-3.
        level: the level segmentation heads predict at, for
            :func:`cggm_seg.networks.make_heads` (``None``: its default, half resolution; 0: full
            resolution). The bundles build the heads with it; the trainer itself takes any heads.
        sublattice: train and score segmentation heads on one voxel in 2^d of their output grid per
            step (see :class:`HeadTrainer`). Defaults to False.

    Raises:
        ValueError: an unknown score name, ``lr <= 0``, a negative level, or a ``sublattice`` that
            is not a bool.
    """

    score: str | ScoreFn | None = None
    lr: float = 1e-3
    level: int | None = None
    sublattice: bool = False

    def __post_init__(self) -> None:
        if self.score is not None:
            get_score(self.score)  # an unknown name fails when the config is parsed
        if not (self.lr > 0):
            raise ValueError(f"the heads' lr must be > 0, got {self.lr}.")
        if self.level is not None and (int(self.level) != self.level or self.level < 0):
            raise ValueError(f"the heads' level must be None or an integer >= 0, got {self.level!r}.")
        if not isinstance(self.sublattice, bool):
            raise ValueError(f"sublattice must be True or False, got {self.sublattice!r}.")

    def trainer(
        self,
        heads: Mapping[str, nn.Module] | nn.ModuleDict,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        default_score: str | ScoreFn,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> HeadTrainer:
        """The :class:`HeadTrainer` of ``heads`` under these options (``optimizer=None``: ``Adam``
        over the heads at :attr:`lr`)."""
        heads = heads if isinstance(heads, nn.ModuleDict) else nn.ModuleDict(dict(heads))
        if optimizer is None:
            optimizer = torch.optim.Adam(heads.parameters(), lr=self.lr)
        score = default_score if self.score is None else self.score
        return HeadTrainer(heads, loss_fn, optimizer, score_fn=score, sublattice=self.sublattice)


def as_head_trainer(
    heads: HeadTrainer | Mapping[str, nn.Module] | nn.ModuleDict,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    options: HeadOptions,
    default_score: str | ScoreFn,
) -> HeadTrainer:
    """``heads`` as a :class:`HeadTrainer`: itself, or modality -> head modules wrapped under
    ``options`` (the heads then train with ``loss_fn``).

    Raises:
        ValueError: head modules without a ``loss_fn``; something that is neither.
    """
    if isinstance(heads, HeadTrainer):
        return heads
    if not isinstance(heads, (Mapping, nn.ModuleDict)) or not all(
        isinstance(h, nn.Module) for h in heads.values()
    ):
        raise ValueError(
            "heads must be a HeadTrainer or modality -> head modules (a dict or nn.ModuleDict, e.g. "
            f"cggm_seg.networks.make_heads(...)), got {type(heads).__name__}."
        )
    if loss_fn is None:
        raise ValueError("head modules train with the task loss: pass loss_fn= (or give a HeadTrainer).")
    return options.trainer(heads, loss_fn, default_score)
