"""Averaging per-modality scores over torch.distributed ranks, so that every rank balances alike."""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["mean_over_ranks", "collective_device", "rank", "world_size"]


def world_size() -> int:
    """The number of ranks of the default process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default process group (0 without one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def collective_device() -> torch.device:
    """The device the default process group's collectives take tensors on: the current CUDA
    device for NCCL (which only reduces CUDA tensors), the CPU for gloo and the others."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over all ranks of the default process group.

    Without an initialised process group (or with one rank) ``values`` is returned unchanged.
    Every rank must call this the same number of times (it is a collective).

    Args:
        values: a tensor of any shape (per-modality scores: shape ``M``).

    Returns:
        A new tensor on ``values.device`` with the rank mean, identical on every rank.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    reduced = values.detach().to(collective_device()).clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return (reduced / dist.get_world_size()).to(values.device)
