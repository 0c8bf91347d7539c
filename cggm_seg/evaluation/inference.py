"""Inference helpers: the fused prediction and every modality head's prediction in one pass."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from cggm_seg.balancing.branches import BranchSpec
from cggm_seg.balancing.observer import HeadObserver

__all__ = ["NetworkWithHeads"]


class NetworkWithHeads(nn.Module):
    """Wraps a multimodal network and its light heads: ``forward(x)`` returns a dict of logits.

    ``{"pred": fused logits, "<modality>": that head's logits, ...}``, all shaped like the fused
    output, so MONAI's sliding-window inference stitches every prediction at once. The branch
    outputs are caught by a :class:`~cggm_seg.balancing.observer.HeadObserver` (also under
    ``torch.no_grad``); nothing is kept after a forward. Use it as a context manager (or call
    :meth:`remove`) to take the observer's hooks off the network when done.

    Args:
        network: the multimodal network (one input tensor, one output tensor).
        heads: modality -> head (``head(features)`` -> logits of the fused output's shape); a
            segmentation head is also given the input's spatial size.
        branches: modality -> branch module name(s) / module(s); ``None`` asks ``network.branch_names()``.
    """

    def __init__(
        self, network: nn.Module, heads: Mapping[str, nn.Module], branches: BranchSpec | None = None
    ) -> None:
        super().__init__()
        self.network = network
        self.heads = heads if isinstance(heads, nn.ModuleDict) else nn.ModuleDict(dict(heads))
        self.observer = HeadObserver(network, dict(self.heads), branches, keep_without_grad=True)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        try:
            out = {"pred": self.network(x)}
            out.update(self.observer.predict(list(x.shape[2:])))
        finally:
            self.observer.clear()
        return out

    def remove(self) -> None:
        """Take the observer's hooks off the network."""
        self.observer.remove()

    def __enter__(self) -> NetworkWithHeads:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()
