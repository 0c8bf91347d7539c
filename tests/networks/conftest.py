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


def check_branch_partition(model: nn.Module) -> set[str]:
    """Assert that ``model.branch_names()`` names each encoder module and that its prefixes, matched
    with the dot, split the encoder parameters by modality; return the other (fusion) parameter names."""
    names = [n for n, _ in model.named_parameters()]
    seen: set[str] = set()
    for modality, prefix in model.branch_names().items():
        assert model.get_submodule(prefix) is model.encoders[modality]
        in_branch = {n for n in names if n.startswith(prefix + ".")}
        assert in_branch == {f"{prefix}.{n}" for n, _ in model.encoders[modality].named_parameters()}
        assert in_branch and not in_branch & seen
        seen |= in_branch
    assert seen == {n for n in names if n.startswith("encoders.")}
    return set(names) - seen


@pytest.fixture
def branch_partition() -> Callable[[nn.Module], set[str]]:
    """:func:`check_branch_partition` as a fixture."""
    return check_branch_partition


@pytest.fixture
def capture() -> Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, dict]]:
    """:func:`run_and_capture` as a fixture."""
    return run_and_capture
