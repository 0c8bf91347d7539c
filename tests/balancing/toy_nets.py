"""Tiny networks that follow the cggm_seg network contract (written here, independent of cggm_seg.networks).

Contract: one input tensor, one output tensor; per-modality branches ``encoders.<modality>``;
the fused model's last layer ``final``; light heads with a ``final`` layer of the same shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

MODALITIES = ("t1", "t1ce", "t2", "flair")
VIEWS = {"mean": 5, "se": 3, "worst": 4}


class ToySegNet(nn.Module):
    """Multi-encoder 3D segmentation net: ``B x M x D x H x W`` -> ``B x 3 x D x H x W`` region logits."""

    def __init__(self, modalities: Sequence[str] = MODALITIES, width: int = 4, hidden: int = 6) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        self.encoders = nn.ModuleDict(
            {m: nn.Sequential(nn.Conv3d(1, width, 3, padding=1), nn.ReLU()) for m in self.modalities}
        )
        self.fusion = nn.Sequential(nn.Conv3d(width * len(self.modalities), hidden, 1), nn.ReLU())
        self.final = nn.Conv3d(hidden, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.encoders[m](x[:, i : i + 1]) for i, m in enumerate(self.modalities)]
        return self.final(self.fusion(torch.cat(features, dim=1)))

    def branch_names(self) -> dict[str, str]:
        return {m: f"encoders.{m}" for m in self.modalities}


class SegHead(nn.Module):
    """Light segmentation head: ``B x width x D x H x W`` -> ``B x 3 x D x H x W``."""

    def __init__(self, width: int = 4, hidden: int = 6) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(width, hidden, 1), nn.ReLU())
        self.final = nn.Conv3d(hidden, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.body(x))


class ToyViewNet(nn.Module):
    """Multi-view MLP: ``B x sum(dims)`` -> ``B x classes`` logits (views split by columns)."""

    def __init__(
        self, views: dict[str, int] = VIEWS, width: int = 6, hidden: int = 8, classes: int = 2
    ) -> None:
        super().__init__()
        self.views = dict(views)
        self.encoders = nn.ModuleDict(
            {v: nn.Sequential(nn.Linear(d, width), nn.ReLU()) for v, d in views.items()}
        )
        self.fusion = nn.Sequential(nn.Linear(width * len(views), hidden), nn.ReLU())
        self.final = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(x, list(self.views.values()), dim=1)
        features = [self.encoders[v](c) for v, c in zip(self.views, chunks)]
        return self.final(self.fusion(torch.cat(features, dim=1)))


class ViewHead(nn.Module):
    """Light classification head: ``B x width`` -> ``B x classes``."""

    def __init__(self, width: int = 6, hidden: int = 8, classes: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(width, hidden), nn.ReLU())
        self.final = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.body(x))


def seg_batch(batch: int = 2, size: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic 4-sequence volume batch and its 3 region masks."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, len(MODALITIES), size, size, size, generator=g)
    y = (torch.rand(batch, 3, size, size, size, generator=g) > 0.7).float()
    return x, y


def view_batch(batch: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic multi-view batch and its binary class labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, sum(VIEWS.values()), generator=g)
    return x, (x[:, 0] > 0).long()
