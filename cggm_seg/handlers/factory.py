"""Building a run's balancing handler and handler lists from bundle settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from cggm_seg.balancing.method import METHODS, BalancingMethod
from cggm_seg.handlers.balancing_handler import BalancingHandler

__all__ = ["METHODS", "balancing_handler", "handler_list", "present"]


def balancing_handler(
    method: BalancingMethod | None, heads: Mapping[str, nn.Module] | None, **kwargs: Any
) -> BalancingHandler | None:
    """``BalancingHandler(method, heads, **kwargs)``, or ``None`` when ``method`` is ``None`` (a
    network without per-sequence branches: early fusion, one sequence)."""
    if method is None:
        return None
    return BalancingHandler(method, heads, **kwargs)


def present(objects: Mapping[str, Any]) -> dict[str, Any]:
    """``objects`` without its ``None`` values (a ``save_dict`` whose balancing handler is absent)."""
    return {key: value for key, value in objects.items() if value is not None}


def handler_list(handlers: Mapping[str, Any]) -> list[Any]:
    """The handlers of a keyed mapping, in order, without the absent or ``_disabled_`` ones (``None``).

    Bundles keep their handlers by name (``train#handler_set#checkpoint``) so that overrides name
    a handler instead of a list position; the trainer takes this list.
    """
    return [handler for handler in handlers.values() if handler is not None]
