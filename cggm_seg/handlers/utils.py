"""Engine details the balancing handlers share: when an optimizer step follows, AMP unscaling, stats."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = [
    "step_follows",
    "unscale_gradients",
    "publish_stats",
    "engine_network",
    "engine_device",
    "is_finite",
]


def step_follows(engine: Engine) -> bool:
    """True when ``SupervisedTrainer`` calls ``optimizer.step()`` after this iteration's backward.

    Mirrors the trainer's gradient-accumulation rule: with ``accumulation_steps = a`` the step
    follows every a-th micro-batch of an epoch and the epoch's last one. Engines without
    ``accumulation_steps`` step every iteration.
    """
    acc = int(getattr(engine, "accumulation_steps", 1) or 1)
    if acc <= 1:
        return True
    epoch_length = engine.state.epoch_length
    if epoch_length is not None:
        local = (engine.state.iteration - 1) % epoch_length
        return (local + 1) % acc == 0 or (local + 1) == epoch_length
    return engine.state.iteration % acc == 0


def unscale_gradients(engine: Engine) -> None:
    """Under AMP, unscale the optimizer's gradients in place before anything reads or scales them.

    ``GradScaler.step`` then skips its own unscaling. A second call in the same step (another
    handler got there first) is harmless.
    """
    scaler = getattr(engine, "scaler", None)
    if not getattr(engine, "amp", False) or scaler is None or not scaler.is_enabled():
        return
    try:
        scaler.unscale_(engine.optimizer)
    except RuntimeError as err:
        if "unscale_() has already been called" not in str(err):
            raise


def publish_stats(engine: Engine, stats: Mapping[str, float]) -> None:
    """Put each statistic on ``engine.state`` as a float attribute (for ``StatsHandler``,
    ``TensorBoardStatsHandler`` and ``MLFlowHandler`` via their ``state_attributes``)."""
    for key, value in stats.items():
        setattr(engine.state, key, float(value))


def engine_network(engine: Engine, network: nn.Module | None) -> nn.Module:
    """The network to balance: the one given, else ``engine.network``.

    Raises:
        ValueError: neither is available.
    """
    if network is not None:
        return network
    net = getattr(engine, "network", None)
    if not isinstance(net, nn.Module):
        raise ValueError(
            "this engine has no `network` attribute (not a MONAI SupervisedTrainer): "
            "pass network= to the handler."
        )
    return net


def engine_device(network: nn.Module) -> torch.device:
    """The device of the network's first parameter (CPU for a parameterless module)."""
    for p in network.parameters():
        return p.device
    return torch.device("cpu")


def is_finite(value: object) -> bool:
    """Whether a loss (tensor or number) or a list of tensors holds only finite values; one device sync."""
    if isinstance(value, (list, tuple)):
        if not value:
            return True
        return bool(torch.stack([torch.isfinite(v).all() for v in value]).all())
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value).all())
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return True
