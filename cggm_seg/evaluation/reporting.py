"""What every test report shares: the best-on-validation checkpoint and the balancing plot."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cggm_seg.evaluation.plots import plot_balance_history

__all__ = ["load_best_checkpoint", "plot_balance"]


def load_best_checkpoint(
    network: nn.Module,
    heads: Mapping[str, nn.Module] | None,
    checkpoint: Path | None,
    require: bool = False,
) -> str:
    """Load a run's best-on-validation checkpoint into ``network`` (and ``heads``); returns what was
    evaluated, for the report's title.

    Args:
        checkpoint: keys ``network`` and ``heads``, or the network's bare state dict (Ignite saves
            a ``save_dict`` of one object so); ``None`` or a missing file: the weights in memory.
        require: fail instead when the file does not exist.

    Raises:
        FileNotFoundError: ``require`` and no checkpoint file.
    """
    if checkpoint is None or not Path(checkpoint).is_file():
        if require:
            raise FileNotFoundError(f"no checkpoint to evaluate: {checkpoint} does not exist.")
        return "weights at the end of training (no best-on-validation checkpoint found)"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    network.load_state_dict(state["network"] if "network" in state else state)
    if heads is not None and "heads" in state:
        nn.ModuleDict(dict(heads)).load_state_dict(state["heads"])
    return f"best-on-validation checkpoint {checkpoint}"


def plot_balance(balancing: Any, png: Path, title: str) -> Path | None:
    """``balance.png`` of a run's :class:`~cggm_seg.handlers.BalancingHandler`, if it has a history;
    the panels are the method's ``plot_panels``."""
    history = getattr(balancing, "history", None)
    if not history:
        return None
    method = balancing.method
    panels = method.plot_panels or (("head_loss", "head loss"),)
    return plot_balance_history(
        history,
        getattr(balancing, "modalities", ()),
        png,
        title=f"{title or method.name}: balancing during training",
        panels=panels,
    )
