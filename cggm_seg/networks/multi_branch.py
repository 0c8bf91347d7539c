"""The contract every multimodal network in cggm_seg follows, so that balancing code can find its parts.

A multimodal network here is one ``nn.Module`` that

- takes ONE input tensor and returns ONE tensor (so MONAI's ``SupervisedTrainer``, inferers and
  TorchScript export treat it like any other network); the modalities are slices of the input;
- keeps one encoder branch per modality in an ``nn.ModuleDict`` attribute ``encoders`` keyed by
  modality name; each encoder's forward output IS that modality's feature (balancing code captures
  it with a forward hook: features are not cached on the module, which keeps it scriptable);
- names its last layer ``final``; everything that is not an encoder (fusion, decoder, ``final``) is
  the fusion module F of the CGGM paper.

:class:`MultiBranchNet` holds the bookkeeping shared by :class:`~cggm_seg.networks.MultiEncoderSegNet`
and :class:`~cggm_seg.networks.MultiViewNet`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["FUSIONS", "Fusion", "MultiBranchNet", "check_branch_names", "check_keeps"]

#: The ways of fusing the per-modality features of one level.
FUSIONS: tuple[str, ...] = ("concat", "sum", "mean")


def check_branch_names(names: Sequence[str], what: str = "modalities") -> tuple[str, ...]:
    """Validate branch names given by a user and return them as a tuple.

    Args:
        names: one name per branch, in input order.
        what: what the names are, for the error message (``"modalities"``, ``"views"``).

    Raises:
        ValueError: when ``names`` is empty, has duplicates, or a name is not a valid
            ``nn.ModuleDict`` key (empty, containing ``"."``, or an attribute of a module such as
            ``"training"`` or ``"forward"``).
    """
    if isinstance(names, str):
        raise ValueError(f"{what} must be a sequence of names, got the string {names!r}.")
    names = tuple(names)
    if not names:
        raise ValueError(f"{what} must name at least one branch, got an empty sequence.")
    if len(set(names)) != len(names):
        raise ValueError(f"{what} must be unique, got {names}.")
    for name in names:
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(
                f"each of {what} must be a non-empty string without '.', got {name!r} in {names}."
            )
        if hasattr(nn.ModuleDict(), name):
            raise ValueError(
                f"{what}: {name!r} is the name of an attribute of a PyTorch module, which a branch "
                f"cannot take; rename it (e.g. {name + '_'!r})."
            )
    return names


def check_keeps(present: torch.Tensor, keeps: Sequence[torch.Tensor], what: str = "M") -> None:
    """Check that every subset view's ``keep`` has the shape of ``present`` (``B x what``).

    Raises:
        ValueError: a keep of another shape.
    """
    for keep in keeps:
        if tuple(keep.shape) != tuple(present.shape):
            raise ValueError(f"each keep must be B x {what} = {list(present.shape)}, got {list(keep.shape)}.")


class Fusion(nn.Module):
    """Fuses M per-modality features of the same shape ``B x C x ...`` into one.

    Args:
        mode: ``"concat"`` (concatenate along the channel dimension, then ``projection``),
            ``"sum"`` or ``"mean"`` (parameter-free; ``projection`` is not used).
        projection: for ``"concat"``, the layer mapping ``B x (M * C) x ...`` to the fused
            feature (e.g. a 1x1x1 convolution or a linear layer); ignored otherwise.

    Raises:
        ValueError: for an unknown mode, or ``"concat"`` without a projection.
    """

    def __init__(self, mode: str = "concat", projection: nn.Module | None = None) -> None:
        super().__init__()
        if mode not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {mode!r}.")
        if mode == "concat" and projection is None:
            raise ValueError("concat fusion needs a projection layer.")
        self.mode = mode
        self.projection: nn.Module = (
            projection if mode == "concat" and projection is not None else nn.Identity()
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if self.mode == "concat":
            return self.projection(torch.cat(features, dim=1))
        stacked = torch.stack(features, dim=0)
        return stacked.mean(dim=0) if self.mode == "mean" else stacked.sum(dim=0)


class MultiBranchNet(nn.Module):
    """Base class of the multimodal networks: per-modality ``encoders`` + fusion module + ``final``.

    Subclasses set ``self.encoders`` (an ``nn.ModuleDict`` keyed by modality name, in input order) and
    ``self.final`` (the last layer) in their constructor.

    Attributes:
        final_layer_name: attribute name of the last layer, ``"final"``.
    """

    final_layer_name: str = "final"

    #: the letter of the branch axis in error messages (``B x M`` sequences, ``B x V`` views)
    branch_axis: str = "M"

    def forward_views(self, x: torch.Tensor, keeps: list[torch.Tensor]) -> list[torch.Tensor]:
        """The outputs of ``x`` and of subset views of it, the encoders run once.

        View ``k`` is ``x`` with the branches (sequences, views) that ``keeps[k]`` does not keep
        (``B x M`` booleans) missing: with ``mask_missing`` it equals ``forward`` of ``x`` with
        those branches zero-filled, since each encoder sees its own branch only; only what
        follows the encoders runs once per view. One exception: a sample that a view leaves with
        no branch at all gets all its features zeroed, where ``forward`` would read its all-zero
        input as complete (a sampler's non-empty subset of a complete case never does that). The
        full view runs last, so that hooks after the encoders (CGGM's on ``final``) see its
        forward last, as after ``forward(x)``.

        Subclasses provide ``_encode(x)`` (the per-branch features), ``_present(x)`` (``B x M``
        booleans: the branches the input holds), ``_masked(features, present)`` and
        ``_predict(features)`` (fusion onward).

        Returns:
            ``[forward(x), view_1, ..., view_K]``.

        Raises:
            ValueError: the network was built without ``mask_missing``, or a keep of the wrong shape.
        """
        if not getattr(self, "mask_missing", False):
            raise ValueError("forward_views needs a network built with mask_missing=True.")
        features = self._encode(x)
        present = self._present(x)
        check_keeps(present, keeps, self.branch_axis)
        views = [
            self._predict(self._masked(features, present & keep.to(present.device, torch.bool)))
            for keep in keeps
        ]
        full = self._predict(self._masked(features, present))  # last: hooks see its forward last
        return [full, *views]

    def branch_names(self) -> dict[str, str]:
        """Modality name -> name of its encoder module, e.g. ``{"t1": "encoders.t1", ...}``.

        Each is a name in ``model.named_modules()`` (``model.get_submodule(name)``) and the prefix
        of that encoder's names in ``model.named_parameters()``: match ``prefix + "."``, since
        ``"encoders.t1"`` is also the start of ``"encoders.t1ce..."``.
        """
        return {name: f"encoders.{name}" for name in self.encoders}
