"""Per-modality branches of a multimodal network: which modules, which parameters, what they output.

A branch is chosen by module, never by tensor rank (``docs/methods.md``): the user names, for
every modality, the module(s) of its encoder, as names in ``model.named_modules()`` (our networks
use ``encoders.<modality>`` and list them with ``model.branch_names()``) or as module objects::

    branches = {"t1": "encoders.t1", "t2": ["encoders.t2", "skips.t2"], "flair": model.encoders.flair}

:class:`FeatureTap` puts forward hooks on those modules (and on the fused model's final layer) to
capture, on every forward, what the heads and the direction term need.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "BranchSpec",
    "unwrap_model",
    "resolve_module",
    "resolve_branches",
    "branch_parameters",
    "detach_features",
    "FeatureTap",
]

#: modality -> module name, module object, or a sequence of them.
BranchSpec = Mapping[str, str | nn.Module | Sequence[str | nn.Module]]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The network inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (else ``model``)."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


def resolve_module(model: nn.Module, ref: str | nn.Module, what: str = "module") -> nn.Module:
    """The submodule of ``model`` named ``ref`` (or ``ref`` itself, checked to belong to ``model``).

    A DDP / DataParallel wrapper is looked through; names are those of the wrapped network
    (``"encoders.t1"``), and the wrapper's own names (``"module.encoders.t1"``) are accepted too.

    Raises:
        ValueError: no module of that name, or a module object that is not part of ``model``.
    """
    wrapper, model = model, unwrap_model(model)
    if isinstance(ref, str) and wrapper is not model and ref.startswith("module."):
        ref = ref[len("module.") :]
    if isinstance(ref, nn.Module):
        if not any(ref is m for m in model.modules()):
            raise ValueError(f"{what}: the module {type(ref).__name__} given is not part of the model.")
        return ref
    try:
        return model.get_submodule(ref)
    except AttributeError:
        top = [name for name, _ in model.named_children()]
        raise ValueError(
            f"{what}: the model has no module named {ref!r} (its top-level modules: {top}; "
            "any name of model.named_modules() works)."
        ) from None


def resolve_branches(model: nn.Module, branches: BranchSpec | None = None) -> dict[str, list[nn.Module]]:
    """Resolve a branch specification to modules, checking that the branches are usable.

    Args:
        model: the multimodal network (a DDP / DataParallel wrapper is looked through).
        branches: modality -> module name(s) / module(s). ``None`` asks the model:
            ``model.branch_names()``.

    Returns:
        modality -> list of modules, in the order given.

    Raises:
        ValueError: no branches, fewer than two modalities, an unknown name, a branch without
            modules or parameters, or two branches sharing a parameter.
    """
    if branches is None:
        network = unwrap_model(model)
        if not hasattr(network, "branch_names"):
            raise ValueError(f"give `branches`: {type(network).__name__} has no branch_names() to ask.")
        branches = network.branch_names()
    if not isinstance(branches, Mapping) or len(branches) < 2:
        raise ValueError(f"branches must map at least two modalities to modules, got {branches!r}.")
    resolved: dict[str, list[nn.Module]] = {}
    owner: dict[int, str] = {}
    for modality, spec in branches.items():
        refs = [spec] if isinstance(spec, (str, nn.Module)) else list(spec)
        if not refs:
            raise ValueError(f"branch {modality!r} names no module.")
        modules = [resolve_module(model, ref, what=f"branch {modality!r}") for ref in refs]
        params = [p for module in modules for p in module.parameters()]
        if not params:
            raise ValueError(f"branch {modality!r} ({refs}) has no parameters to modulate.")
        for p in params:
            other = owner.setdefault(id(p), modality)
            if other != modality:
                raise ValueError(f"branches {other!r} and {modality!r} overlap: they share a parameter.")
        resolved[modality] = modules
    return resolved


def branch_parameters(model: nn.Module, branches: BranchSpec | None = None) -> dict[str, list[nn.Parameter]]:
    """modality -> the parameters of its branch (each parameter once), see :func:`resolve_branches`."""
    out: dict[str, list[nn.Parameter]] = {}
    for modality, modules in resolve_branches(model, branches).items():
        seen: dict[int, nn.Parameter] = {}
        for module in modules:
            for p in module.parameters():
                seen.setdefault(id(p), p)
        out[modality] = list(seen.values())
    return out


def detach_features(features: Any, float32: bool = False) -> Any:
    """``features`` with every tensor detached, also inside (nested) lists and tuples.

    ``float32=True`` also casts floating-point tensors to float32: what the heads take, whatever
    precision an autocast region gave the encoders."""
    if isinstance(features, torch.Tensor):
        features = features.detach()
        return features.float() if float32 and features.is_floating_point() else features
    if isinstance(features, (list, tuple)):
        return type(features)(detach_features(f, float32) for f in features)
    return features


class FeatureTap:
    """Forward hooks that keep, from the model's last forward, each branch's output and the final
    layer's input, detached (they share memory with the live tensors and keep no graph alive).

    By default only forwards run with gradients enabled are kept: a validation pass under
    ``torch.no_grad()`` or ``torch.inference_mode()`` in between leaves the training batch's
    features in place. ``keep_without_grad=True`` keeps every forward's (test-time prediction).

    This is the only place in cggm_seg that puts hooks on a model; :meth:`remove` takes them all off.

    Args:
        model: the multimodal network.
        branches: as for :func:`resolve_branches` (``None``: ``model.branch_names()``).
        final: name or module of the fused model's final layer whose input to keep; ``None`` for none.
        keep_without_grad: also keep the outputs of forwards run without gradients. Defaults to False.
        detach: keep the branch outputs detached (the default); ``False`` keeps them attached to
            the forward's graph, for a loss on them that trains the branches (robust training's
            per-sequence supervision).

    Attributes:
        features: modality -> the branch output (tensor or list/tuple of tensors, as the module
            returns it); for a branch of several modules, a tuple of their outputs in branch order.
        final_input: the first positional input of ``final`` at its last call, or ``None``.

    Call :meth:`remove` to take the hooks off, :meth:`clear` to drop the kept tensors.
    """

    def __init__(
        self,
        model: nn.Module,
        branches: BranchSpec | None = None,
        final: str | nn.Module | None = None,
        keep_without_grad: bool = False,
        detach: bool = True,
    ):
        self.branches = resolve_branches(model, branches)
        self.keep_without_grad = keep_without_grad
        self.detach = bool(detach)
        self.final = None if final is None else resolve_module(model, final, what="final layer")
        self._outputs: dict[str, dict[int, Any]] = {m: {} for m in self.branches}
        self.final_input: torch.Tensor | None = None
        self._handles = []
        for modality, modules in self.branches.items():
            for index, module in enumerate(modules):
                self._handles.append(module.register_forward_hook(self._branch_hook(modality, index)))
        if self.final is not None:
            self._handles.append(self.final.register_forward_hook(self._final_hook))

    def _branch_hook(self, modality: str, index: int) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self.keep_without_grad or torch.is_grad_enabled():
                self._outputs[modality][index] = detach_features(output) if self.detach else output

        return hook

    def _final_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.keep_without_grad or torch.is_grad_enabled():
            self.final_input = args[0].detach()

    @property
    def features(self) -> dict[str, Any]:
        """modality -> captured branch output (see the class docstring).

        Raises:
            RuntimeError: a branch has not run since the tap was made or cleared.
        """
        out: dict[str, Any] = {}
        for modality, modules in self.branches.items():
            kept = self._outputs[modality]
            if len(kept) != len(modules):
                raise RuntimeError(
                    f"no features captured for branch {modality!r}: run the model's forward first "
                    "(and do not clear the tap in between)."
                )
            out[modality] = kept[0] if len(modules) == 1 else tuple(kept[i] for i in range(len(modules)))
        return out

    @property
    def hooked(self) -> bool:
        """True while the tap's hooks are on the model."""
        return bool(self._handles)

    def clear_features(self) -> None:
        """Drop the kept branch outputs (the final layer's input stays)."""
        for kept in self._outputs.values():
            kept.clear()

    def clear(self) -> None:
        """Drop every kept tensor (they are replaced on the next forward anyway)."""
        self.clear_features()
        self.final_input = None

    def remove(self) -> None:
        """Take every hook off the model and drop the kept tensors."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()
