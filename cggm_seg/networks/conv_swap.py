"""Swapping a built network's ``nn.Conv3d`` layers for drop-in subclasses, keeping their parameters."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["swap_conv3d"]


def swap_conv3d(
    module: nn.Module, accept: Callable[[nn.Conv3d], bool], build: Callable[[nn.Conv3d], nn.Conv3d]
) -> nn.Module:
    """Replace, in place, every plain ``nn.Conv3d`` child for which ``accept(conv)`` is true by
    ``build(conv)``; the new layer takes the old one's parameter objects (so optimizers and
    ``state_dict`` keys are unchanged) and its train/eval mode. Returns ``module``."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Conv3d or not accept(child):
                continue
            new = build(child)
            new.weight = child.weight
            new.bias = child.bias
            new.train(child.training)
            setattr(parent, name, new)
    return module
