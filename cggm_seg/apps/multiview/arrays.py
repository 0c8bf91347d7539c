"""Your own multi-view data: arrays in, a checked and split :class:`ViewData` out.

The file format is one NumPy ``.npz`` archive (``numpy.savez``), read with ``allow_pickle=False``:

- ``view_<name>``: one array per view, any number of views under their own names (the order in
  the file is the input order): vectors ``N x D`` or sequences ``N x T x D`` (every view the same
  rank, and the sequences one length T), numbers;
- ``y``: the targets, ``N`` (or ``N x 1``): integers are class labels ``0 .. C-1``
  (classification), floating point numbers are regression targets;
- ``split`` (optional): ``N`` strings, each ``training``, ``validation`` or ``test`` (``train``,
  ``valid``, ``val`` also read); without it the data is split by ``fractions``, stratified by
  class (or by quintile of a regression target), with the run's seed;
- ``task`` (optional): ``"classification"`` or ``"regression"``, to override the choice by dtype;
- ``class_names`` (optional): ``C`` strings.

Nothing else may be in the file. :func:`write_view_file` writes the format. Every check fails with a
``ValueError`` that names the file, the view (or ``y`` / ``split``), the split where it applies, and
what was expected. The features are standardised with the training split's mean and standard
deviation (so a zero-filled view is the training mean, the missing-view audit's "absent"); a
regression target likewise (metrics are reported in its units).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from cggm_seg.apps.multiview.view_data import SPLITS, ViewData, standardise, stratified_split
from cggm_seg.networks.multi_branch import check_branch_names

__all__ = ["SPLIT_ALIASES", "DATA_TASKS", "views_from_arrays", "load_view_file", "write_view_file"]

#: the values a ``split`` array may hold, and the split each means
SPLIT_ALIASES: dict[str, str] = {
    "training": "training",
    "train": "training",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "test": "test",
}
#: the tasks of a multi-view dataset
DATA_TASKS: tuple[str, ...] = ("classification", "regression")
_OPTIONAL_KEYS = ("split", "task", "class_names")

logger = logging.getLogger("cggm_seg.data")


def _nonfinite_where(bad: np.ndarray, split_of: np.ndarray | None) -> str:
    """``"in samples [3, 17] (split 'training')"`` for a boolean per sample."""
    rows = np.flatnonzero(bad)
    text = f"in {rows.size} samples, e.g. {rows[:5].tolist()}"
    if split_of is not None:
        splits = sorted({str(split_of[r]) for r in rows})
        text += f" (split {', '.join(repr(s) for s in splits)})"
    return text


def views_from_arrays(
    name: str,
    views: Mapping[str, np.ndarray],
    y: np.ndarray,
    task: str | None = None,
    split: np.ndarray | Sequence[str] | None = None,
    seed: int = 0,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    class_names: Sequence[str] | None = None,
    feature_names: Mapping[str, Sequence[str]] | None = None,
    source: str = "",
) -> ViewData:
    """Check, split and standardise a multi-view dataset given as arrays (see the module docstring).

    Args:
        name: the dataset's name (run folders and reports carry it): letters, digits, ``_ - .``.
        views: view name -> ``N x D`` or ``N x T x D`` array, in input order.
        y: ``N`` targets: integer class labels, or floating point regression targets.
        task: ``"classification"`` or ``"regression"``; default from ``y``'s dtype.
        split: ``N`` split names (:data:`SPLIT_ALIASES`); default: a stratified split by
            ``fractions`` with ``seed``.
        seed, fractions: the split when ``split`` is not given.
        class_names: one name per class (classification).
        feature_names: view name -> its columns' names; default ``<view>_<i>``.
        source: where the arrays came from (a file), put first in every error.

    Raises:
        ValueError: anything that does not match the format, naming the view, split and expectation.
    """
    at = f"{source}: " if source else ""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise ValueError(f"{at}the dataset name must be letters, digits, '_', '-' or '.', got {name!r}.")
    if not views:
        raise ValueError(f"{at}no views: give at least one view_<name> array.")
    try:
        names = check_branch_names(tuple(views), "views")
    except ValueError as err:
        raise ValueError(f"{at}{err}") from None

    # the targets first: they fix N
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{at}y: expected N targets (or N x 1), got shape {y.shape}.")
    if y.dtype.kind not in "biuf":
        raise ValueError(f"{at}y: expected integer labels or float targets, got dtype {y.dtype}.")
    n = y.shape[0]
    if n < 3:
        raise ValueError(f"{at}y: {n} samples; a training, a validation and a test split need at least 3.")
    if task is None:
        task = "regression" if y.dtype.kind == "f" else "classification"
    if task not in DATA_TASKS:
        raise ValueError(f"{at}task must be one of {DATA_TASKS}, got {task!r}.")

    split_of = None
    if split is not None:
        split_raw = np.asarray(split)
        if split_raw.shape != (n,) or split_raw.dtype.kind not in "US":
            raise ValueError(
                f"{at}split: expected {n} strings (one per sample of y), got shape {split_raw.shape} "
                f"of dtype {split_raw.dtype}."
            )
        values = split_raw.astype(str).tolist()
        unknown = sorted(set(values) - set(SPLIT_ALIASES))
        if unknown:
            raise ValueError(
                f"{at}split: unknown values {unknown[:5]}; each must be one of {sorted(SPLIT_ALIASES)}."
            )
        split_of = np.array([SPLIT_ALIASES[v] for v in values])
        counts = {s: int((split_of == s).sum()) for s in SPLITS}
        if min(counts.values()) == 0:
            raise ValueError(f"{at}split: every split needs samples, got {counts}.")

    bad = ~np.isfinite(y.astype(np.float64))
    if bad.any():
        raise ValueError(f"{at}y: non-finite targets (NaN or inf) {_nonfinite_where(bad, split_of)}.")
    if task == "classification":
        if y.dtype.kind == "f" and not np.array_equal(y, np.round(y)):
            raise ValueError(f"{at}y: class labels must be whole numbers, got e.g. {y[y != np.round(y)][0]}.")
        y = y.astype(np.int64)
        if y.min() < 0:
            raise ValueError(f"{at}y: class labels must be 0 .. C-1, got {int(y.min())}.")
        num_classes = int(y.max()) + 1
        absent = np.setdiff1d(np.arange(min(num_classes, n + 1)), y)
        if num_classes > n or absent.size:
            raise ValueError(
                f"{at}y: class labels must be 0 .. C-1 with every class present; labels up to "
                f"{num_classes - 1} but no sample of {absent[:10].tolist()}. For a regression target "
                "stored as integers, store floats or set task='regression'."
            )
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"{at}class_names: {len(class_names)} names for {num_classes} classes "
                f"(labels 0..{num_classes - 1})."
            )
    elif class_names is not None:
        raise ValueError(f"{at}class_names: a regression task has no classes.")

    arrays: dict[str, np.ndarray] = {}
    rank = None
    for view in names:
        a = np.asarray(views[view])
        where = f"{at}view {view!r}"
        if a.dtype.kind not in "biuf":
            raise ValueError(f"{where}: expected numbers, got dtype {a.dtype}.")
        if a.ndim not in (2, 3):
            raise ValueError(f"{where}: expected N x D vectors or N x T x D sequences, got shape {a.shape}.")
        if a.shape[0] != n:
            raise ValueError(f"{where}: {a.shape[0]} samples, but y has {n}.")
        if min(a.shape[1:]) < 1:
            raise ValueError(f"{where}: empty feature axis, shape {a.shape}.")
        if rank is None:
            rank, first = a.ndim, view
        elif a.ndim != rank:
            raise ValueError(
                f"{where}: shape {a.shape}, but view {first!r} has {rank} dims: every view must be "
                "vectors N x D, or every view sequences N x T x D."
            )
        if a.ndim == 3 and arrays and a.shape[1] != arrays[first].shape[1]:
            raise ValueError(
                f"{where}: {a.shape[1]} steps, view {first!r} {arrays[first].shape[1]}: sequences are "
                "concatenated per step, so every view needs the same length T."
            )
        a = a.astype(np.float64)
        bad = ~np.isfinite(a).reshape(n, -1).all(axis=1)
        if bad.any():
            raise ValueError(f"{where}: non-finite values (NaN or inf) {_nonfinite_where(bad, split_of)}.")
        arrays[view] = a

    if split_of is None:
        strata = y if task == "classification" else np.digitize(y, np.quantile(y, [0.2, 0.4, 0.6, 0.8]))
        try:
            parts = stratified_split(strata, fractions, seed)
        except ValueError as err:
            raise ValueError(f"{at}{err}") from None
    else:
        parts = tuple(np.flatnonzero(split_of == s) for s in SPLITS)

    data = np.concatenate([arrays[v] for v in names], axis=-1)
    xs = standardise(*(data[p] for p in parts))
    out = ViewData(
        name=name,
        task=task,
        metrics=task,
        views={v: int(arrays[v].shape[-1]) for v in names},
        feature_names={
            v: [
                str(f) for f in (feature_names or {}).get(v, [f"{v}_{i}" for i in range(arrays[v].shape[-1])])
            ]
            for v in names
        },
        x={s: torch.from_numpy(a) for s, a in zip(SPLITS, xs)},
        y={},
    )
    if task == "regression":
        target = y.astype(np.float64)
        mean, std = float(target[parts[0]].mean()), float(target[parts[0]].std())
        if std <= 1e-12 * max(1.0, abs(mean)):
            raise ValueError(f"{at}y: the regression target is constant ({mean:g}) over the training split.")
        out.target_mean, out.target_std = mean, std
        out.y = {
            s: torch.from_numpy(((target[p] - mean) / std).astype(np.float32))[:, None]
            for s, p in zip(SPLITS, parts)
        }
    else:
        out.num_classes = num_classes
        out.y = {s: torch.from_numpy(y[p]) for s, p in zip(SPLITS, parts)}
        out.class_names = [str(c) for c in (class_names if class_names is not None else range(num_classes))]
        absent = sorted(set(range(num_classes)) - set(y[parts[0]].tolist()))
        if absent:
            logger.warning(f"{at}classes {absent[:10]} have no training sample")
    return out


def load_view_file(
    path: str | Path,
    seed: int = 0,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    name: str | None = None,
) -> ViewData:
    """Read and check a multi-view ``.npz`` file (see the module docstring).

    Args:
        path: the ``.npz`` file.
        seed, fractions: the split, when the file carries none.
        name: the dataset's name; default the file's name without ``.npz`` (other characters than
            letters, digits, ``_ - .`` replaced by ``_``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a file that is not a NumPy archive, a key outside the format, or any check of
            :func:`views_from_arrays`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no multi-view data file at {path}.")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValueError(f"{path}: not a NumPy .npz archive ({err}).") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: a single array, not an .npz archive of view_<name> arrays and y.")
    with archive:
        keys = list(archive.files)
        unknown = [k for k in keys if not (k.startswith("view_") or k == "y" or k in _OPTIONAL_KEYS)]
        if unknown:
            raise ValueError(
                f"{path}: unknown keys {unknown}; the format has view_<name> arrays, y, and optionally "
                f"{list(_OPTIONAL_KEYS)}."
            )
        if "y" not in keys:
            raise ValueError(f"{path}: no targets 'y' (keys: {keys}).")

        def read(key: str) -> np.ndarray:
            try:
                return archive[key]
            except ValueError as err:  # object arrays need pickle, which is refused
                raise ValueError(
                    f"{path}: {key}: cannot be read without pickle ({err}); store numbers or strings."
                ) from None

        views = {k[len("view_") :]: read(k) for k in keys if k.startswith("view_")}

        def strings(key: str, ndim: int, expected: str) -> np.ndarray | None:
            if key not in keys:
                return None
            raw = read(key)
            if raw.ndim != ndim or raw.dtype.kind not in "US":
                raise ValueError(
                    f"{path}: {key}: expected {expected}, got shape {raw.shape} of dtype {raw.dtype}."
                )
            return raw

        task_raw, names_raw = strings("task", 0, "one string"), strings("class_names", 1, "C strings")
        task = None if task_raw is None else str(task_raw)
        class_names = None if names_raw is None else [str(c) for c in names_raw]
        split = read("split") if "split" in keys else None
        y = read("y")
    stem = re.sub(r"[^A-Za-z0-9_.\-]+", "_", path.name[:-4] if path.suffix.lower() == ".npz" else path.stem)
    return views_from_arrays(
        name or stem, views, y, task=task, split=split, seed=seed, fractions=fractions,
        class_names=class_names, source=str(path),
    )  # fmt: skip


def write_view_file(
    path: str | Path,
    views: Mapping[str, np.ndarray],
    y: np.ndarray,
    split: Sequence[str] | np.ndarray | None = None,
    task: str | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write multi-view data in the ``.npz`` format that :func:`load_view_file` reads.

    Raises:
        ValueError: data that :func:`load_view_file` would refuse (checked by
            :func:`views_from_arrays` before anything is written).
    """
    views_from_arrays("check", views, y, task=task, split=split, class_names=class_names)
    arrays: dict[str, np.ndarray] = {f"view_{v}": np.asarray(a) for v, a in views.items()}
    arrays["y"] = np.asarray(y)
    if split is not None:
        arrays["split"] = np.asarray(split, dtype=str)
    if task is not None:
        arrays["task"] = np.asarray(task)
    if class_names is not None:
        arrays["class_names"] = np.asarray(class_names, dtype=str)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path
