"""What defines a training run, recorded with its checkpoints so that a resume can refuse another run.

A run folder holds one run. Resuming it with other data, another seed or other settings would
carry that run's weights and optimizer state on under the new definition and write the results
over the old ones, without a word. :func:`run_definition` describes a run as a JSON-able dict:

- ``seed``;
- ``data``: each case of a datalist (split -> cases with ``image`` / ``label`` paths) by its split,
  its id and its files' names, sizes and a digest of their first and last 4 KiB (for a
  ``.nii.gz`` the last bytes hold the checksum of the whole image); any other data (in-memory
  arrays) by :func:`describe`, whose arrays are digested whole;
- every other argument by :func:`describe`: the object's own settings, read from the object, so
  that an override anywhere inside it (``--optimizer#momentum``, a transform's probability) is
  seen without a list of keys to maintain.

What is not handed to :func:`run_definition` may change on resume: in the bundles, the number of
epochs, validation and test settings, logging, the device, AMP, data-loading workers and caching.
:class:`~cggm_seg.handlers.ResumableCheckpoint` saves the definition with every checkpoint and
refuses to resume one whose definition differs from the run's (:func:`definition_differences`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import PurePath
from types import BuiltinFunctionType, FunctionType, MethodType
from typing import Any

import numpy as np
import torch
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from cggm_seg.balancing.branches import unwrap_model

Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = [
    "RunDefinitionError",
    "data_fingerprint",
    "definition_differences",
    "describe",
    "run_definition",
]

#: bytes read at each end of a data file for its digest
_EDGE = 4096
#: arrays with at most this many elements are recorded as values, larger ones as shape and digest
_INLINE = 64
#: how deep :func:`describe` follows attributes
_DEPTH = 8
#: case ids named in a message, per kind of change
_NAMED = 3
#: state, not settings (seeds cover the generators), or the engine itself
_NOT_SETTINGS: tuple[type, ...] = (logging.Logger, np.random.RandomState, torch.Generator, torch.device)
if isinstance(Engine, type):
    _NOT_SETTINGS += (Engine,)
_OMIT = object()
_ABSENT = object()


class RunDefinitionError(ValueError):
    """A resume refused: the checkpoint was saved by a run of another definition."""


def run_definition(data: Any = None, seed: int | None = None, **objects: Any) -> dict[str, Any]:
    """The definition of a training run, as a JSON-able dict.

    Args:
        data: the run's data: a datalist mapping (split name -> list of cases, each a dict whose
            ``image`` and ``label`` are file paths, as ``prepare_dataset`` returns) or any object
            (:func:`describe`, arrays digested).
        seed: the run's seed.
        objects: name -> what trains the run (the network, loss, optimizer, balancing handler,
            training data loader...), each recorded by :func:`describe`.

    Example (bundle)::

        "definition": "$cggm_seg.handlers.run_definition(data=@data, seed=@seed, network=@network, ...)"
    """
    definition = {"seed": seed, "data": data_fingerprint(data)}
    definition.update({name: describe(value) for name, value in objects.items()})
    return definition


def data_fingerprint(data: Any) -> Any:
    """A JSON-able fingerprint of a run's data (see the module docstring).

    A datalist mapping gives ``{"cases": {split: {case_id: digest}}}`` (other keys, such as the
    datalist file's own path, are not data); anything else :func:`describe`'s result.
    """
    if isinstance(data, Mapping) and any(_is_case_list(v) for v in data.values()):
        splits = {str(k): v for k, v in data.items() if _is_case_list(v)}
        return {
            "cases": {split: {_case_id(c): _case_digest(c) for c in cases} for split, cases in splits.items()}
        }
    return describe(data)


def describe(obj: Any) -> Any:
    """``obj``'s settings as JSON-able values, read from the object.

    Numbers, strings and ``None`` are themselves; lists, tuples and mappings are described item by
    item; small arrays are lists, larger ones ``{"shape", "dtype", "digest"}``; classes and
    functions are their qualified names. A module is its public attributes and, when it has
    sub-modules, its layers (``repr``); an optimizer its class and each parameter group's settings
    and size; a data loader its batch size, sampler and dataset's ``transform``; any other object
    its class and public attributes (those not starting with ``_``). Loggers, random generators,
    devices and engines are state or execution, not settings, and are left out, as are a data
    loader's workers and a dataset's caching.
    """
    value = _describe(obj, 0, set())
    return None if value is _OMIT else value


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', type(obj).__name__)}".lstrip(".")


def _array(value: torch.Tensor | np.ndarray | np.generic) -> Any:
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.size <= _INLINE and array.dtype.kind in "biuf":
        return _describe(array.tolist(), 0, set())  # non-finite values as strings
    digest = hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]
    return {"shape": list(array.shape), "dtype": str(array.dtype), "digest": digest}


def _describe(obj: Any, depth: int, ancestors: set[int]) -> Any:
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else repr(float(obj))
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, _NOT_SETTINGS):
        return _OMIT
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, (type, FunctionType, BuiltinFunctionType, MethodType)):
        return _qualname(getattr(obj, "__func__", obj))
    if isinstance(obj, (torch.dtype, np.dtype)):
        return str(obj)
    if isinstance(obj, (torch.Tensor, np.ndarray, np.generic)):
        return _array(obj)
    if id(obj) in ancestors or depth > _DEPTH:
        return _qualname(type(obj))
    ancestors = ancestors | {id(obj)}

    def inner(value: Any) -> Any:
        return _describe(value, depth + 1, ancestors)

    if isinstance(obj, Mapping):
        items = {str(k): inner(v) for k, v in obj.items()}
        return {k: v for k, v in items.items() if v is not _OMIT}
    if isinstance(obj, (list, tuple)):
        return [None if v is _OMIT else v for v in map(inner, obj)]
    if isinstance(obj, (set, frozenset)):
        return sorted((inner(v) for v in obj), key=json.dumps)
    if isinstance(obj, functools.partial):
        return {
            "type": "functools.partial",
            "func": inner(obj.func),
            "args": inner(obj.args),
            "keywords": inner(obj.keywords),
        }
    if isinstance(obj, torch.optim.Optimizer):
        return _optimizer(obj, inner)
    if isinstance(obj, DataLoader):  # not its workers: how fast it loads, not what
        return {
            "batch_size": obj.batch_size,
            "drop_last": obj.drop_last,
            "sampler": inner(obj.sampler),
            "collate_fn": inner(obj.collate_fn),
            "dataset": inner(obj.dataset),
        }
    if isinstance(obj, Dataset):
        # the samples are the run's data (``data_fingerprint``); caching is execution
        return {"transform": inner(getattr(obj, "transform", None))}
    if isinstance(obj, Sampler):
        # not the rank or the number of replicas: those are how many processes run it
        kept = ("shuffle", "replacement", "seed", "drop_last", "even_divisible")
        return {"type": _qualname(type(obj)), **{k: inner(getattr(obj, k)) for k in kept if hasattr(obj, k)}}
    if isinstance(obj, nn.Module):
        module = unwrap_model(obj)
        described = _attributes(module, inner, skip=("training",))
        if next(module.children(), None) is not None:
            described["layers"] = repr(module)
        return described
    if hasattr(obj, "__dict__"):
        return _attributes(obj, inner)
    return _qualname(type(obj))


def _attributes(obj: Any, inner: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    described = {"type": _qualname(type(obj))}
    for key, value in vars(obj).items():
        if key.startswith("_") or key in skip:
            continue
        value = inner(value)
        if value is not _OMIT:
            described[key] = value
    return described


def _optimizer(optimizer: torch.optim.Optimizer, inner: Any) -> dict[str, Any]:
    groups = [
        {
            **{k: inner(v) for k, v in group.items() if k != "params"},
            "parameters": sum(p.numel() for p in group["params"]),
        }
        for group in optimizer.param_groups
    ]
    described = {"type": _qualname(type(optimizer))}
    if len(groups) == 1:
        described.update(groups[0])
    else:
        described["groups"] = groups
    return described


# -- data ------------------------------------------------------------------------------------------


def _is_case_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(c, Mapping) and ("image" in c or "label" in c) for c in value
    )


def _paths(value: Any) -> list[str | PurePath]:
    """The paths of a case's ``image`` or ``label``: one path or a list of them."""
    if isinstance(value, (str, PurePath)):
        return [value]
    return [p for p in value if isinstance(p, (str, PurePath))] if isinstance(value, (list, tuple)) else []


def _case_id(case: Mapping[str, Any]) -> str:
    if "case_id" in case:
        return str(case["case_id"])
    paths = _paths(case.get("image")) or _paths(case.get("label"))
    return os.path.basename(paths[0]) if paths else json.dumps(describe(case), sort_keys=True)


def _file_fingerprint(path: str | PurePath) -> list[Any]:
    """``[name, size, digest of the first and last 4 KiB]``, or ``[name, None, None]`` if missing."""
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        digest = hashlib.sha1()
        with open(path, "rb") as f:
            digest.update(f.read(_EDGE))
            if size > _EDGE:
                f.seek(max(_EDGE, size - _EDGE))
                digest.update(f.read(_EDGE))
    except OSError:
        return [name, None, None]
    return [name, size, digest.hexdigest()[:16]]


def _case_digest(case: Mapping[str, Any]) -> str:
    """A digest of a case's files (``image``, ``label``) and its other fields (id, layout...)."""
    content = {
        str(k): [_file_fingerprint(p) for p in _paths(v)] if k in ("image", "label") else describe(v)
        for k, v in sorted(case.items())
    }
    return hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


# -- differences -----------------------------------------------------------------------------------


def definition_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between two :func:`run_definition` results, one line each: ``key: saved -> current``.

    For a datalist the line counts the cases added, removed, changed (their files) and moved to
    another split, naming a few of each.
    """
    differences: list[str] = []
    old_data, new_data = saved.get("data", _ABSENT), current.get("data", _ABSENT)
    if (
        isinstance(old_data, Mapping)
        and isinstance(new_data, Mapping)
        and "cases" in old_data
        and "cases" in new_data
    ):
        line = _case_differences(old_data["cases"], new_data["cases"])
        if line:
            differences.append(f"data: {line}")
        saved = {k: v for k, v in saved.items() if k != "data"}
        current = {k: v for k, v in current.items() if k != "data"}
    _differences(saved, current, "", differences)
    return differences


def _case_differences(old: Mapping[str, Mapping[str, str]], new: Mapping[str, Mapping[str, str]]) -> str:
    def where(cases: Mapping[str, Mapping[str, str]]) -> dict[str, tuple[str, str]]:
        return {case: (split, digest) for split, members in cases.items() for case, digest in members.items()}

    before, after = where(old), where(new)
    kinds = {
        "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "changed": sorted(c for c in set(before) & set(after) if before[c][1] != after[c][1]),
        "moved to another split": sorted(
            c for c in set(before) & set(after) if before[c][1] == after[c][1] and before[c][0] != after[c][0]
        ),
    }
    parts = []
    for kind, cases in kinds.items():
        if cases:
            named = ", ".join(cases[:_NAMED]) + (", ..." if len(cases) > _NAMED else "")
            parts.append(f"{len(cases)} case{'s' if len(cases) > 1 else ''} {kind} ({named})")
    if not parts and before.keys() == after.keys():
        return ""
    return "; ".join(parts) or "the splits differ"


def _label(index: int, item: Any) -> str:
    kind = item.get("type") if isinstance(item, Mapping) else None
    return f"{index}:{kind.rsplit('.', 1)[-1]}" if isinstance(kind, str) else str(index)


def _differences(old: Any, new: Any, path: str, out: list[str]) -> None:
    if old == new:
        return
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in [*new, *(k for k in old if k not in new)]:
            _differences(old.get(key, _ABSENT), new.get(key, _ABSENT), f"{path}.{key}" if path else key, out)
        return
    structured = (
        isinstance(old, list) and isinstance(new, list) and any(isinstance(v, Mapping) for v in old + new)
    )
    if structured and len(old) == len(new):  # a list of values reads best whole: [64, 64, 64] -> [32, 32, 32]
        for index, (a, b) in enumerate(zip(old, new)):
            _differences(a, b, f"{path}[{_label(index, b)}]", out)
        return
    out.append(f"{path}: {_change(old, new)}")


def _change(old: Any, new: Any) -> str:
    if isinstance(old, str) and isinstance(new, str) and "\n" in old + new:
        before, after = old.splitlines(), new.splitlines()
        line = next(
            (i for i, (a, b) in enumerate(zip(before, after)) if a != b), min(len(before), len(after))
        )
        shown = [lines[line].strip() if line < len(lines) else "(end)" for lines in (before, after)]
        return f"differ from line {line + 1}: {_short(shown[0])} -> {_short(shown[1])}"
    return f"{_show(old)} -> {_show(new)}"


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        return f"{len(value)} items"
    return _short(json.dumps(value))


def _short(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
