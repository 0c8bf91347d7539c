"""Multi-view vector datasets that ship offline, split into views for classification and regression.

Three scikit-learn datasets, each cut into views along its documented features (the scikit-learn
user guide, "Toy datasets"):

- ``breast_cancer`` (569 x 30, binary: malignant 0 / benign 1): three views of the ten nuclear
  measures, their ``mean``, standard ``error`` and ``worst`` value (feature names
  ``"mean radius"``, ``"radius error"``, ``"worst radius"``, ...);
- ``diabetes`` (442 x 10, regression of disease progression after one year): ``clinical``
  (age, sex, bmi, bp) and ``serum`` (s1-s6, the six blood serum measures);
- ``digits`` (1797 8x8 images, 10 classes): the four 4x4 quadrants ``top_left``, ``top_right``,
  ``bottom_left``, ``bottom_right`` (16 pixels each, ``pixel_<row>_<col>``): four views, as BraTS
  has four sequences.

:func:`load_views` returns a :class:`ViewData`: seeded, stratified train / validation / test
splits (regression targets stratified by quantile bins), features standardised with the
training split's mean and standard deviation only (so a zero-filled view is the training mean:
the missing-view audit's "absent"), regression targets standardised likewise (metrics are
reported back in the target's units). The CMU-MOSI / IEMOCAP aligned-feature pickles are read by
:func:`cggm_seg.apps.multiview.aligned.load_aligned_features` into the same structure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cggm_seg.apps.multiview.aligned import load_aligned_features
from cggm_seg.apps.multiview.view_data import _SPLITS, ViewData, standardise

__all__ = [
    "SKLEARN_DATASETS",
    "VIEW_DATASETS",
    "ViewData",
    "sklearn_views",
    "load_sklearn_views",
    "load_views",
    "stratified_split",
    "standardise",
]

#: the scikit-learn datasets :func:`load_views` cuts into views
SKLEARN_DATASETS: tuple[str, ...] = ("breast_cancer", "diabetes", "digits")
#: every dataset name :func:`load_views` takes (the aligned ones need ``dataset_dir``)
VIEW_DATASETS: tuple[str, ...] = (*SKLEARN_DATASETS, "mosi", "iemocap")


def sklearn_views(name: str, feature_names: Sequence[str]) -> dict[str, list[int]]:
    """The view split of a scikit-learn dataset: view -> column indices, from its feature names.

    Raises:
        ValueError: an unknown dataset, or feature names that do not give the documented views.
    """
    names = [str(n) for n in feature_names]
    if name == "breast_cancer":
        views = {
            "mean": [i for i, n in enumerate(names) if n.startswith("mean ")],
            "error": [i for i, n in enumerate(names) if n.endswith(" error")],
            "worst": [i for i, n in enumerate(names) if n.startswith("worst ")],
        }
        expected = 10
    elif name == "diabetes":
        views = {
            "clinical": [names.index(n) for n in ("age", "sex", "bmi", "bp") if n in names],
            "serum": [names.index(n) for n in ("s1", "s2", "s3", "s4", "s5", "s6") if n in names],
        }
        expected = None
    elif name == "digits":
        quadrants = {"top_left": (0, 0), "top_right": (0, 4), "bottom_left": (4, 0), "bottom_right": (4, 4)}
        views = {
            view: [names.index(f"pixel_{r}_{c}") for r in range(r0, r0 + 4) for c in range(c0, c0 + 4)
                   if f"pixel_{r}_{c}" in names]
            for view, (r0, c0) in quadrants.items()
        }  # fmt: skip
        expected = 16
    else:
        raise ValueError(f"unknown scikit-learn dataset {name!r}; available: {list(SKLEARN_DATASETS)}.")
    used = sorted(i for cols in views.values() for i in cols)
    sizes = {v: len(c) for v, c in views.items()}
    if used != list(range(len(names))) or (expected and set(sizes.values()) != {expected}):
        raise ValueError(
            f"the feature names of {name!r} do not give its documented views: {sizes} from {names}"
        )
    return views


def stratified_split(
    strata: np.ndarray, fractions: Sequence[float], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of a seeded train / validation / test split that keeps each stratum's proportion.

    Args:
        strata: one stratum per sample (class labels, or quantile bins of a regression target).
        fractions: three positive fractions (normalised to sum to 1).
        seed: the split's seed.

    Raises:
        ValueError: not three positive fractions, or a split that would be empty.
    """
    from sklearn.model_selection import train_test_split

    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or (f <= 0).any():
        raise ValueError(
            f"fractions must be three positive numbers (train, val, test), got {list(fractions)}."
        )
    f = f / f.sum()
    index = np.arange(len(strata))
    try:
        train, rest = train_test_split(index, train_size=f[0], random_state=seed, stratify=strata)
        val, test = train_test_split(
            rest, train_size=f[1] / (f[1] + f[2]), random_state=seed, stratify=strata[rest]
        )
    except ValueError as err:
        raise ValueError(
            f"cannot split {len(strata)} samples by fractions {f.round(3).tolist()}: {err}"
        ) from None
    return np.sort(train), np.sort(val), np.sort(test)


def load_sklearn_views(name: str, seed: int = 0, fractions: Sequence[float] = (0.6, 0.2, 0.2)) -> ViewData:
    """One of :data:`SKLEARN_DATASETS` as a :class:`ViewData` (see the module docstring)."""
    from sklearn import datasets

    loader = {
        "breast_cancer": datasets.load_breast_cancer,
        "diabetes": datasets.load_diabetes,
        "digits": datasets.load_digits,
    }
    if name not in loader:
        raise ValueError(f"unknown scikit-learn dataset {name!r}; available: {list(SKLEARN_DATASETS)}.")
    bunch = loader[name]()
    data, target = np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target)
    names = list(bunch.feature_names)
    columns = sklearn_views(name, names)
    order = [i for cols in columns.values() for i in cols]
    data = data[:, order]
    regression = name == "diabetes"
    strata = np.digitize(target, np.quantile(target, [0.2, 0.4, 0.6, 0.8])) if regression else target
    parts = stratified_split(strata, fractions, seed)
    xs = standardise(*(data[p] for p in parts))
    x = {split: torch.from_numpy(a) for split, a in zip(_SPLITS, xs)}
    out = ViewData(
        name=name,
        task="regression" if regression else "classification",
        metrics="regression" if regression else "classification",
        views={v: len(c) for v, c in columns.items()},
        feature_names={v: [str(names[i]) for i in c] for v, c in columns.items()},
        x=x,
        y={},
    )
    if regression:
        mean, std = float(target[parts[0]].mean()), float(target[parts[0]].std())
        out.target_mean, out.target_std = mean, std
        out.y = {
            s: torch.from_numpy(((target[p] - mean) / std).astype(np.float32))[:, None]
            for s, p in zip(_SPLITS, parts)
        }
    else:
        out.num_classes = int(target.max()) + 1
        out.y = {s: torch.from_numpy(target[p].astype(np.int64)) for s, p in zip(_SPLITS, parts)}
        out.class_names = [str(c) for c in getattr(bunch, "target_names", range(out.num_classes))]
    return out


def load_views(
    dataset: str,
    dataset_dir: str | Path | None = None,
    seed: int = 0,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    **kwargs: object,
) -> ViewData:
    """A dataset of :data:`VIEW_DATASETS` by name: the bundles' ``data``.

    Args:
        dataset: ``breast_cancer``, ``diabetes``, ``digits`` (shipped with scikit-learn), or
            ``mosi`` / ``iemocap`` (aligned-feature pickles, in ``dataset_dir``).
        dataset_dir: for ``mosi`` / ``iemocap``: the pickle, or a folder holding one ``*.pkl``.
        seed, fractions: the split of the scikit-learn datasets (the pickles carry their own).
        kwargs: passed to :func:`~cggm_seg.apps.multiview.aligned.load_aligned_features` (``nonfinite``,
            ``modalities``, ``num_classes``).

    Raises:
        ValueError: an unknown dataset, or a pickle dataset without ``dataset_dir``.
    """
    if dataset in SKLEARN_DATASETS:
        if dataset_dir:
            raise ValueError(
                f"{dataset!r} ships with scikit-learn: leave dataset_dir unset (got {dataset_dir})."
            )
        return load_sklearn_views(dataset, seed=seed, fractions=fractions)
    if dataset in ("mosi", "iemocap"):
        if not dataset_dir:
            raise ValueError(
                f"dataset {dataset!r} is read from its aligned-feature pickle: give --dataset_dir "
                "(the .pkl file, or a folder holding one)."
            )
        return load_aligned_features(dataset_dir, dataset, **kwargs)  # type: ignore[arg-type]
    raise ValueError(f"unknown dataset {dataset!r}; available: {list(VIEW_DATASETS)}.")
