"""Building a run's balancing handler and handler lists from bundle settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from cggm_seg.handlers.base import HeadBalancingHandler
from cggm_seg.handlers.cggm_handler import CGGMHandler
from cggm_seg.handlers.monitor_handler import HeadMonitorHandler
from cggm_seg.handlers.ogmge_handler import OGMGEHandler

__all__ = ["METHODS", "make_balancing_handler", "handler_list", "present"]

#: method name -> its handler class; ``"none"`` trains with no heads and no handler.
METHODS: dict[str, type[HeadBalancingHandler] | None] = {
    "joint": HeadMonitorHandler,
    "cggm": CGGMHandler,
    "ogmge": OGMGEHandler,
    "none": None,
}


def make_balancing_handler(
    method: str, heads: Mapping[str, nn.Module] | None, **settings: Any
) -> HeadBalancingHandler | None:
    """The balancing handler of ``method`` with ``settings`` (its constructor's keyword arguments).

    ``"joint"``: :class:`HeadMonitorHandler` (the heads only observe); ``"cggm"``:
    :class:`CGGMHandler`; ``"ogmge"``: :class:`OGMGEHandler`; ``"none"``: no handler (``None``),
    for networks without per-sequence branches (early fusion, one sequence).

    Raises:
        ValueError: an unknown method, or heads missing for a method that needs them.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}.")
    handler_cls = METHODS[method]
    if handler_cls is None:
        return None
    if heads is None:
        raise ValueError(f"method {method!r} observes the sequences through light heads: give `heads`.")
    return handler_cls(heads, **settings)


def present(objects: Mapping[str, Any]) -> dict[str, Any]:
    """``objects`` without its ``None`` values (a ``save_dict`` whose balancing handler is absent)."""
    return {key: value for key, value in objects.items() if value is not None}


def handler_list(handlers: Mapping[str, Any]) -> list[Any]:
    """The handlers of a keyed mapping, in order, without the absent or ``_disabled_`` ones (``None``).

    Bundles keep their handlers by name (``train#handler_set#checkpoint``) so that overrides name
    a handler instead of a list position; the trainer takes this list.
    """
    return [handler for handler in handlers.values() if handler is not None]
