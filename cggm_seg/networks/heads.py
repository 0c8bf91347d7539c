"""Light unimodal heads: predict the task from one modality's encoder features alone.

CGGM (Guo et al., NeurIPS 2024) gives each modality a head f_i that observes its encoder phi_i and
never trains it: by default every head here detaches its input features in ``forward``, so a head
loss sends no gradient into the encoder whatever the caller passes. Built with ``detach=False`` a
head is a per-sequence supervision path instead: its loss trains the encoder too (robust
training). Heads are deliberately light (a few thousand parameters for segmentation, not a
decoder) and end in a layer ``final`` of exactly the shape of the fused model's ``final``, so
CGGM's direction term compares gradients like with like.

Use :func:`make_heads` to build one head per modality with shapes read from the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.layers.utils import get_act_layer
from torch import nn

from cggm_seg.balancing.head_trainer import check_offset
from cggm_seg.networks.pointwise import PointwiseConv3d

__all__ = [
    "TASKS",
    "DEFAULT_LEVEL",
    "SegmentationHead",
    "ClassificationHead",
    "RegressionHead",
    "build_heads",
    "make_heads",
]

#: The tasks :func:`make_heads` builds heads for.
TASKS: tuple[str, ...] = ("segmentation", "classification", "regression")

#: The level segmentation heads predict at by default, where the branch returns more than one map:
#: half resolution (nothing of the heads' step is computed at full resolution; ``docs/results.md``).
DEFAULT_LEVEL = 1


class SegmentationHead(nn.Module):
    """Light segmentation head on multi-scale 3D features: a top-down cascade of 1x1x1 convolutions.

    Each feature map is projected to ``hidden`` channels by a 1x1x1 convolution; from the coarsest
    map down, the running sum is upsampled to the next finer map's size and that map's projection
    is added (the top-down path of a feature pyramid network, Lin et al., CVPR 2017, without its
    3x3 convolutions; nearest-neighbour upsampling as there). The sum of the finest scale is
    upsampled to the output size if it is smaller, activated, and mapped to the output by
    ``final``. However many scales there are, only one ``hidden``-channel map is upsampled to full
    resolution, the costly step of a light head on a CPU.

    With ``level = L > 0`` the head predicts at the resolution of the ``L``-th map instead (the
    finer maps are not used): nothing is computed at full resolution, and the heads' trainer pools
    the label to that resolution (:func:`cggm_seg.balancing.head_trainer.pool_target`) for the loss and
    the score. ``final`` keeps the fused model's shape, so the direction term still compares like
    with like. Given an explicit ``spatial_size`` (test-time prediction), such a head upsamples its
    3-channel logits to it (trilinear).

    Args:
        in_channels: channels of each feature map, fine to coarse (e.g. the network's
            ``feature_channels``); every map is still passed to ``forward``.
        hidden: channels after each scale's 1x1x1 convolution; also the input channels of
            ``final``, so set it to the fused model's ``final_channels``.
        out_channels: output channels. Defaults to 3 (TC, WT, ET).
        stride: downsampling factor of the finest (first) map relative to the input image; the
            default output size is that map's size times ``stride``. Defaults to 1.
        act: activation after the sum. Defaults to ``("RELU", {"inplace": True})``.
        interp_mode: ``"nearest"`` (default) or ``"trilinear"`` (smoother; several times the cost
            of nearest per upsampling, forward and backward, on a CPU).
        cpu_fast_paths: run the 1x1x1 convolutions as
            :class:`~cggm_seg.networks.pointwise.PointwiseConv3d` (matrix products on a CPU).
            Defaults to False (plain ``nn.Conv3d``).
        level: the map whose resolution the head predicts at (0: the finest map, upsampled by
            ``stride`` to the input's size). Defaults to 0.
        detach: detach the features first, so that the head's loss never reaches the encoder
            (an observer, the default); ``False``: the loss trains the encoder too.

    Forward: a list of maps ``B x in_channels[i] x D_i x H_i x W_i`` (as an encoder returns them,
    fine to coarse; a head of one map also takes the map itself) and optionally ``spatial_size``
    (the output's ``[D, H, W]``; default: the finest map's size times its stride at level 0, the
    ``level``-th map's size above) -> logits ``B x out_channels x D x H x W``. The features are
    detached first unless ``detach=False``.

    Attributes:
        final: a 1x1x1 ``nn.Conv3d(hidden, out_channels)`` (a ``PointwiseConv3d`` with
            ``cpu_fast_paths``).
    """

    __jit_unused_properties__ = ["supports_sublattice"]

    def __init__(
        self,
        in_channels: Sequence[int],
        hidden: int,
        out_channels: int = 3,
        stride: int = 1,
        act: tuple | str = ("RELU", {"inplace": True}),
        interp_mode: str = "nearest",
        cpu_fast_paths: bool = False,
        level: int = 0,
        detach: bool = True,
    ) -> None:
        super().__init__()
        self.detach = bool(detach)
        if not in_channels:
            raise ValueError("in_channels must list at least one feature map.")
        if interp_mode not in ("nearest", "trilinear"):
            raise ValueError(f"interp_mode must be 'nearest' or 'trilinear', got {interp_mode!r}.")
        if not (isinstance(level, int) and 0 <= level < len(in_channels)):
            raise ValueError(
                f"level must be an integer in [0, {len(in_channels) - 1}] (one of the {len(in_channels)} "
                f"feature maps), got {level!r}."
            )
        self.stride = int(stride)
        self.level = level
        self.in_channels = [int(c) for c in in_channels]
        self.interp_mode = interp_mode
        self.align_corners: bool | None = False if interp_mode == "trilinear" else None
        conv = PointwiseConv3d if cpu_fast_paths else nn.Conv3d
        self.projections = nn.ModuleList([conv(c, hidden, kernel_size=1) for c in in_channels[level:]])
        self.act = get_act_layer(act)
        self.final = conv(hidden, out_channels, kernel_size=1)

    def forward(self, features: list[torch.Tensor], spatial_size: list[int] | None = None) -> torch.Tensor:
        if not torch.jit.is_scripting():
            features = self._checked(features)
        # Projecting before upsampling is the same map (both linear) on fewer channels.
        projected = [
            projection(self._input(features[self.level + i])) for i, projection in enumerate(self.projections)
        ]
        y = projected[-1]
        for i in range(len(projected) - 2, -1, -1):
            z = projected[i]
            # In place on the projection's output, which its convolution does not keep for backward.
            y = z.add_(self._upsample(y, z.shape[2:]))
        if self.level > 0:
            logits = self.final(self.act(y))
            if spatial_size is None or list(logits.shape[2:]) == spatial_size:
                return logits
            return F.interpolate(logits, size=spatial_size, mode="trilinear", align_corners=False)
        if spatial_size is None:
            spatial_size = [int(s) * self.stride for s in features[0].shape[2:]]
        if list(y.shape[2:]) != spatial_size:
            y = self._upsample(y, spatial_size)
        return self.final(self.act(y))

    @property
    def supports_sublattice(self) -> bool:
        """Whether :meth:`forward_sublattice` can compute this head's logits on a sub-lattice exactly:
        nearest-neighbour upsampling, and at level 0 no stride (the output is the finest map's grid)."""
        return self.interp_mode == "nearest" and (self.level > 0 or self.stride == 1)

    @torch.jit.unused
    def forward_sublattice(self, features: list[torch.Tensor], offset: Sequence[int]) -> torch.Tensor:
        """The head's logits on one sub-lattice of its output grid: the voxels ``offset + 2 * u``
        (one voxel in 2^3), computed without the rest.

        The output grid is the ``level``-th map's (the finest map's at level 0). Every layer of the
        head is pointwise and its upsampling nearest-neighbour, so the output at a voxel of that map
        depends only on that voxel's features and on the coarser maps' values at its parents. The
        parents of the voxels ``offset + 2 * u`` are the next coarser map's voxels ``u`` themselves:
        the result is the top-down sum at that coarser map's resolution plus the projection of the
        strided slice ``features[level][..., o::2, o::2, o::2]``, the same numbers as
        ``self(features)[..., o0::2, o1::2, o2::2]`` for a fraction of the work
        (:class:`cggm_seg.balancing.HeadTrainer` with ``sublattice=True`` trains and scores heads
        this way, on a different sub-lattice each step).

        Args:
            features: as for :meth:`forward`.
            offset: the sub-lattice's offset, one 0 or 1 per spatial dimension.

        Returns:
            logits ``B x out_channels x D/2 x H/2 x W/2`` (the output grid's size halved).

        Raises:
            ValueError: a head that cannot (:attr:`supports_sublattice`: trilinear upsampling, or
                ``stride != 1`` at level 0), an offset that is not one 0 or 1 per spatial dimension,
                an output grid with an odd size, or a next coarser map that is not that grid halved.
        """
        features = self._checked(features)
        if not self.supports_sublattice:
            raise ValueError(
                "forward_sublattice needs nearest-neighbour upsampling and, at level 0, stride 1 (the output "
                f"on the finest map's grid), got level {self.level}, stride {self.stride}, interp_mode "
                f"{self.interp_mode!r}."
            )
        grid = features[self.level]
        size = [int(s) for s in grid.shape[2:]]
        offset = check_offset(offset, len(size))
        if any(s % 2 for s in size):
            raise ValueError(
                f"a sub-lattice of step 2 needs even sizes; the output grid's (map {self.level}) are {size}."
            )
        half = [s // 2 for s in size]
        if len(self.projections) > 1 and [int(s) for s in features[self.level + 1].shape[2:]] != half:
            raise ValueError(
                f"forward_sublattice needs map {self.level + 1} at half the size of map {self.level} "
                f"({half}), got {list(features[self.level + 1].shape[2:])}."
            )
        strided = self._input(grid)[(slice(None), slice(None), *(slice(o, None, 2) for o in offset))]
        projected = [self.projections[0](strided)]
        projected += [
            projection(self._input(features[self.level + i]))
            for i, projection in enumerate(self.projections)
            if i
        ]
        y = projected[-1]
        for i in range(len(projected) - 2, -1, -1):
            z = projected[i]
            # The output grid's parents are the next map's voxels themselves: no upsampling there.
            y = z.add_(y if i == 0 else self._upsample(y, z.shape[2:]))
        return self.final(self.act(y))

    @torch.jit.unused
    def _checked(self, features: Any) -> list[torch.Tensor]:
        """``features`` as a list of maps, checked against the head's scales and channels."""
        if isinstance(features, torch.Tensor) and len(self.projections) == 1:
            return self._checked([features])  # a branch that returns one map
        expected = self.in_channels
        if isinstance(features, torch.Tensor) or not isinstance(features, (list, tuple)):
            got = (
                f"a tensor of shape {list(features.shape)}"
                if isinstance(features, torch.Tensor)
                else type(features)
            )
            raise ValueError(
                f"SegmentationHead expects a list of {len(expected)} feature maps B x C x D x H x W "
                f"(fine to coarse, channels {expected}), got {got}; for a branch that returns one map, "
                "build the head with in_channels=[C]."
            )
        shapes = [list(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__ for f in features]
        if len(features) != len(expected) or any(
            not isinstance(f, torch.Tensor) or f.dim() != 5 or f.shape[1] != c
            for f, c in zip(features, expected)
        ):
            raise ValueError(
                f"SegmentationHead expects {len(expected)} maps B x C x D x H x W with channels {expected} "
                f"(fine to coarse), got shapes {shapes}."
            )
        return list(features)

    def _input(self, feature: torch.Tensor) -> torch.Tensor:
        return feature.detach() if self.detach else feature

    def _upsample(self, y: torch.Tensor, size: list[int]) -> torch.Tensor:
        return F.interpolate(y, size=size, mode=self.interp_mode, align_corners=self.align_corners)


class _VectorHead(nn.Module):
    """Two-layer head on a ``B x in_features`` feature: Linear -> act -> dropout -> ``final``."""

    def __init__(
        self, in_features: int, hidden: int, out_features: int, act: tuple | str, dropout: float, detach: bool
    ) -> None:
        super().__init__()
        self.detach = bool(detach)
        self.fc = nn.Linear(in_features, hidden)
        self.act = get_act_layer(act)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.final = nn.Linear(hidden, out_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.detach:
            features = features.detach()
        return self.final(self.dropout(self.act(self.fc(features))))


class ClassificationHead(_VectorHead):
    """Light classification head: ``B x in_features`` -> class logits ``B x num_classes``.

    Args:
        in_features: width of the encoder feature.
        hidden: width of the hidden layer; also ``final``'s input, so set it to the fused model's
            ``final.in_features``.
        num_classes: output logits (binary tasks: 2 with cross-entropy, or 1 with BCE).
        act: activation. Defaults to ``("RELU", {"inplace": True})``.
        dropout: dropout before ``final``. Defaults to 0.
        detach: detach the features first (the default); ``False``: the loss trains the encoder too.

    Attributes: ``final = nn.Linear(hidden, num_classes)``.
    """

    def __init__(
        self,
        in_features: int,
        hidden: int,
        num_classes: int,
        act: tuple | str = ("RELU", {"inplace": True}),
        dropout: float = 0.0,
        detach: bool = True,
    ) -> None:
        super().__init__(in_features, hidden, num_classes, act, dropout, detach)


class RegressionHead(_VectorHead):
    """Light regression head: ``B x in_features`` -> predictions ``B x out_features``.

    Args:
        in_features: width of the encoder feature.
        hidden: width of the hidden layer; also ``final``'s input, so set it to the fused model's
            ``final.in_features``.
        out_features: regression targets. Defaults to 1.
        act: activation. Defaults to ``("RELU", {"inplace": True})``.
        dropout: dropout before ``final``. Defaults to 0.
        detach: detach the features first (the default); ``False``: the loss trains the encoder too.

    Attributes: ``final = nn.Linear(hidden, out_features)``.
    """

    def __init__(
        self,
        in_features: int,
        hidden: int,
        out_features: int = 1,
        act: tuple | str = ("RELU", {"inplace": True}),
        dropout: float = 0.0,
        detach: bool = True,
    ) -> None:
        super().__init__(in_features, hidden, out_features, act, dropout, detach)


def build_heads(
    network: nn.Module,
    example_input: torch.Tensor,
    task: str = "segmentation",
    branches: Any = None,
    final: str | nn.Module = "final",
    **kwargs: Any,
) -> nn.ModuleDict:
    """Light heads for any multi-branch network, shaped by probing it once with ``example_input``.

    The network runs once (in eval mode, without gradients) with hooks on each branch; what a
    branch returns decides its head:

    - ``"segmentation"``: a tensor ``B x C x D x H x W`` or a list of them (multi-scale, fine to
      coarse) -> a :class:`SegmentationHead` with ``in_channels`` the maps' channels, ``stride`` the
      input size over the finest map's, ``hidden = final.in_channels`` and ``out_channels =
      final.out_channels``; the fused ``final`` must be a 1x1x1 ``nn.Conv3d``.
    - ``"classification"`` / ``"regression"``: a tensor ``B x F`` -> a :class:`ClassificationHead` /
      :class:`RegressionHead` with ``in_features = F``, ``hidden = final.in_features`` and
      ``final.out_features`` outputs; the fused ``final`` must be an ``nn.Linear``.

    Every head's ``final`` then has the shape of the fused one, as CGGM's direction term needs.

    Args:
        network: the multimodal network (one input tensor, one output tensor).
        example_input: one input batch of the shape training will use (zeros are fine).
        task: one of :data:`TASKS`.
        branches: modality -> the branch's module name(s) or module(s) (``None``:
            ``network.branch_names()``); a branch of several modules gives its head the tuple of
            their outputs, read as maps fine to coarse.
        final: name (or module) of the fused final layer. Defaults to ``"final"``.
        kwargs: passed to each head (``act``, ``detach``, ``interp_mode``, ``cpu_fast_paths``, ``level``,
            ``dropout``...). A segmentation head's ``level`` defaults to :data:`DEFAULT_LEVEL` where
            its branch returns several maps and to 0 (full resolution) where it returns one.

    Returns:
        modality -> head, on the CPU (move it with ``.to(device)``).

    Raises:
        ValueError: an unknown task, a final layer or branch output the task's heads cannot match,
            naming the branch and what was found.
    """
    from cggm_seg.balancing.branches import FeatureTap, resolve_module, unwrap_model

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
    final_layer = resolve_module(network, final, what="final layer")
    segmentation = task == "segmentation"
    if segmentation and not (isinstance(final_layer, nn.Conv3d) and final_layer.kernel_size == (1, 1, 1)):
        raise ValueError(
            f"segmentation heads need a 1x1x1 nn.Conv3d final layer to copy its shape; "
            f"{final!r} is {final_layer!r}."
        )
    if not segmentation and not isinstance(final_layer, nn.Linear):
        raise ValueError(f"{task} heads need an nn.Linear final layer; {final!r} is {final_layer!r}.")
    tap = FeatureTap(network, branches, keep_without_grad=True)
    model = unwrap_model(network)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            network(example_input)
        features = tap.features
    finally:
        tap.remove()
        model.train(was_training)
    heads = {}
    for modality, out in features.items():
        maps = [out] if isinstance(out, torch.Tensor) else list(out)  # what the head will receive
        if segmentation:
            if not maps or any(not isinstance(m, torch.Tensor) or m.dim() != 5 for m in maps):
                shapes = [list(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__ for m in maps]
                raise ValueError(
                    f"branch {modality!r} returns {shapes}; segmentation heads need B x C x D x H x W "
                    "maps (one tensor or a list, fine to coarse)."
                )
            stride = kwargs.get("stride")
            if stride is None:
                ratios = {int(i) / int(f) for i, f in zip(example_input.shape[2:], maps[0].shape[2:])}
                if len(ratios) != 1 or not float(next(iter(ratios))).is_integer():
                    raise ValueError(
                        f"branch {modality!r}: its finest map {list(maps[0].shape[2:])} is not the input "
                        f"{list(example_input.shape[2:])} divided by one integer stride; give stride=."
                    )
                stride = int(ratios.pop())
            options = {k: v for k, v in kwargs.items() if k not in ("stride", "level")}
            level = kwargs.get("level")
            options["level"] = (DEFAULT_LEVEL if len(maps) > DEFAULT_LEVEL else 0) if level is None else level
            heads[modality] = SegmentationHead(
                [m.shape[1] for m in maps],
                final_layer.in_channels,
                final_layer.out_channels,
                stride=stride,
                **options,
            )
        else:
            if len(maps) != 1 or maps[0].dim() != 2:
                shapes = [list(m.shape) for m in maps]
                raise ValueError(f"branch {modality!r} returns {shapes}; {task} heads need one B x F tensor.")
            if kwargs.get("level") is not None:
                raise ValueError(f"level= is an option of segmentation heads; {task} heads have none.")
            options = {k: v for k, v in kwargs.items() if k != "level"}
            head_cls = ClassificationHead if task == "classification" else RegressionHead
            heads[modality] = head_cls(
                maps[0].shape[1], final_layer.in_features, final_layer.out_features, **options
            )
    return nn.ModuleDict(heads)


def make_heads(task: str, model: nn.Module, **kwargs: Any) -> nn.ModuleDict:
    """One light head per modality of a cggm_seg network, through :func:`build_heads`.

    The model is probed with a zero input of the smallest size it takes:
    :class:`~cggm_seg.networks.MultiEncoderSegNet` (``1 x M x d x d x d``, d = its size divisor;
    heads with the model's ``cpu_fast_paths``) or :class:`~cggm_seg.networks.MultiViewNet`
    (``1 x in_features``, or ``1 x 1 x in_features`` with a sequence encoder). For another network
    use :func:`build_heads` with an example input.

    Args:
        task: one of :data:`TASKS`.
        model: a cggm_seg network (``encoders``, ``final``); pass the network itself, not its
            ``DistributedDataParallel`` wrapper.
        kwargs: passed to each head: ``act``, ``detach``; ``interp_mode``, ``cpu_fast_paths``,
            ``level`` (segmentation: the level the heads predict at, ``None`` or left out for
            :data:`DEFAULT_LEVEL`, 0 for full resolution); ``dropout`` (classification, regression).

    Raises:
        ValueError: for an unknown task, or a model that lacks what the task's heads need.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
    encoders = getattr(model, "encoders", None)
    if not isinstance(encoders, nn.ModuleDict):
        raise ValueError(
            f"{type(model).__name__} has no nn.ModuleDict 'encoders': not a cggm_seg network; build the "
            "heads of another network with build_heads(network, example_input, task, branches, final)."
        )
    branches = {m: f"encoders.{m}" for m in encoders}
    final = getattr(model, "final", None)
    if task == "segmentation":
        if not isinstance(final, nn.Conv3d) or not hasattr(model, "divisor"):
            raise ValueError(
                f"segmentation heads need a model with a size 'divisor' and an nn.Conv3d 'final'; "
                f"{type(model).__name__} has final={type(final).__name__}."
            )
        kwargs.setdefault("cpu_fast_paths", bool(getattr(model, "cpu_fast_paths", False)))
        d = model.divisor
        example = torch.zeros(1, len(encoders), d, d, d, device=final.weight.device)
    else:
        if not isinstance(final, nn.Linear) or not hasattr(model, "in_features"):
            raise ValueError(
                f"{task} heads need a model with 'in_features' and an nn.Linear 'final'; "
                f"{type(model).__name__} has final={type(final).__name__}."
            )
        shape = getattr(model, "sample_shape", (model.in_features,))
        example = torch.zeros(1, *shape, device=final.weight.device)
    return build_heads(model, example, task, branches, "final", **kwargs)
