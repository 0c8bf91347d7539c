"""Shared helpers for the network tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn


def run_and_capture(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Run ``model(x)`` and return its output and each encoder's output, captured by forward hooks
    (the way the balancing code captures branch features)."""
    features: dict = {}
    hooks = [
        encoder.register_forward_hook(lambda _m, _i, out, name=name: features.__setitem__(name, out))
        for name, encoder in model.encoders.items()
    ]
    try:
        y = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return y, features


@pytest.fixture
def capture() -> Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, dict]]:
    """:func:`run_and_capture` as a fixture."""
    return run_and_capture
