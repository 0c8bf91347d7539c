"""MONAI decathlon-format datalists with a fixed, seeded train / validation / test split.

A datalist is the JSON file a bundle reads its cases from::

    {
      "name": "...", "layout": "brats2021", "modalities": ["t1", "t1ce", "t2", "flair"],
      "regions": ["tc", "wt", "et"], "seed": 0,
      "fractions": {"training": 0.7, "validation": 0.15, "test": 0.15},
      "numTraining": 875, "numValidation": 187, "numTest": 189, "numUnlabelled": 0,
      "training":   [{"case_id": "BraTS2021_00000", "layout": "brats2021",
                      "image": ["BraTS2021_00000/BraTS2021_00000_t1.nii.gz", ...4 files...],
                      "label": "BraTS2021_00000/BraTS2021_00000_seg.nii.gz"}, ...],
      "validation": [...], "test": [...],
      "unlabelled": [{"case_id": ..., "layout": ..., "image": ...}, ...]
    }

``image`` is the four sequences in canonical :data:`~cggm_seg.apps.brats.layouts.MODALITIES` order, or
for the ``msd`` layout the one 4D file (reordered by
:class:`~cggm_seg.apps.brats.transforms.OrderModalitiesd` after loading). Paths inside the datalist's
folder are written relative to it, others absolute.

How a case is assigned to a split: ``u = sha256("<seed>/<case_id>")`` read as a number in [0, 1)
and compared with the cumulative fractions. A case's split therefore depends only on its id, the
seed and the fractions: adding or removing other cases (a new data release) never moves a case
between splits, so a test case never leaks into training. The price is that split sizes follow
the fractions only on average (binomially: 1251 BraTS 2021 cases give 15 % +- 1 % validation).
For tiny datasets (n >= 3) a split that would be empty borrows the nearest case from the largest
split, so every split with a positive fraction has at least one case. With fewer cases, or a zero
fraction, a split may be empty: :func:`require_splits` refuses a datalist whose splits a run
needs are not all filled, saying how many cases there are and what the fractions gave.

Labelled cases are split; cases without a segmentation (MSD ``imagesTs``, a BraTS validation
release) go to ``unlabelled``, so that ``test`` can always be scored.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cggm_seg.apps.brats.discovery import Case, require_complete
from cggm_seg.apps.brats.layouts import MODALITIES, REGIONS

__all__ = [
    "SPLITS",
    "UNLABELLED",
    "DEFAULT_FRACTIONS",
    "make_datalist",
    "case_entry",
    "describe_splits",
    "require_splits",
    "write_datalist",
    "load_datalist",
]

#: The labelled splits of a datalist, in the order of :data:`DEFAULT_FRACTIONS`.
SPLITS: tuple[str, ...] = ("training", "validation", "test")

#: Default fractions of labelled cases for (training, validation, test).
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)

#: The datalist list of cases without a segmentation (not split).
UNLABELLED: str = "unlabelled"


def make_datalist(
    cases: Sequence[Case],
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    name: str | None = None,
    allow_missing: bool = False,
) -> dict[str, Any]:
    """Build a decathlon-format datalist of ``cases`` split by the seeded rule in the module docstring.

    Args:
        cases: complete cases of one layout, e.g. from :func:`~cggm_seg.apps.brats.discovery.discover_cases`.
        seed: the split seed; the same seed gives the same split.
        fractions: fractions of labelled cases for training, validation and test (default
            0.7 / 0.15 / 0.15): three non-negative numbers summing to 1.
        name: the datalist's ``name`` field (default: ``"<layout> datalist"``).
        allow_missing: take cases that lack some (not all) sequence files: their entry has
            ``None`` in place of each such file and ``"missing"``, the names of those sequences
            (for evaluation and inference, which zero-fill them with ``LoadSequencesd``).

    Returns:
        The datalist as a dict with absolute paths (as strings); :func:`write_datalist` saves it.

    Raises:
        ValueError: no cases, cases of several layouts, an incomplete or duplicated case
            (see :func:`~cggm_seg.apps.brats.discovery.require_complete`), or invalid ``fractions``.
    """
    fractions = _check_fractions(fractions)
    if not cases:
        raise ValueError("no cases to put in a datalist; expected at least one complete case")
    # require_complete checks; with allow_missing, missing sequence files are not counted
    require_complete(
        [c.without_missing_sequences() if allow_missing and not c.misses_every_sequence else c for c in cases]
    )
    cases = list(cases)
    layouts = sorted({c.layout for c in cases})
    if len(layouts) > 1:
        raise ValueError(f"cases of several layouts {layouts}; expected one layout per datalist")
    labelled = [c for c in cases if c.label is not None]
    assignment = _assign_splits([c.case_id for c in labelled], seed, fractions)
    datalist: dict[str, Any] = {
        "name": name or f"{layouts[0]} datalist",
        "description": "cggm_seg datalist: split by sha256('<seed>/<case_id>') against the fractions",
        "tensorImageSize": "4D",
        "layout": layouts[0],
        "modalities": list(MODALITIES),
        "regions": list(REGIONS),
        "seed": seed,
        "fractions": dict(zip(SPLITS, fractions)),
    }
    splits: dict[str, list[dict[str, Any]]] = {split: [] for split in (*SPLITS, UNLABELLED)}
    for case in labelled:
        splits[assignment[case.case_id]].append(case_entry(case, allow_missing))
    splits[UNLABELLED] = [case_entry(c, allow_missing) for c in cases if c.label is None]
    for split, entries in splits.items():
        datalist[f"num{split.capitalize()}"] = len(entries)
    datalist.update(splits)
    return datalist


def describe_splits(datalist: dict[str, Any]) -> str:
    """How :func:`make_datalist` split the cases, in one line for a log or an error message.

    ``"5 labelled cases split by seed 0 and fractions 0.7 / 0.15 / 0.15 give 3 training, 1
    validation, 1 test"``, followed by ``"; 2 unlabelled"`` when there are cases without a label.
    """
    sizes = [len(datalist[split]) for split in SPLITS]
    fractions = " / ".join(f"{datalist['fractions'][split]:g}" for split in SPLITS)
    line = (
        f"{sum(sizes)} labelled case{'s' * (sum(sizes) != 1)} split by seed {datalist['seed']} and "
        f"fractions {fractions} give " + ", ".join(f"{n} {split}" for n, split in zip(sizes, SPLITS))
    )
    unlabelled = len(datalist.get(UNLABELLED, []))
    return f"{line}; {unlabelled} unlabelled" if unlabelled else line


def require_splits(datalist: dict[str, Any], splits: Sequence[str] = SPLITS) -> None:
    """Check that each split of ``splits`` holds at least one case of ``datalist``.

    A run that trains on an empty split, or validates or tests on one, fails or reports nothing
    only once it gets there: this check lets it stop before anything is trained.

    Args:
        datalist: a datalist of :func:`make_datalist`.
        splits: the splits that must not be empty (default: all of :data:`SPLITS`).

    Raises:
        ValueError: a name in ``splits`` is not one of :data:`SPLITS`, or one of them is empty; the
            message gives the number of cases, the seed and fractions and the size of each split.
    """
    unknown = [split for split in splits if split not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; expected some of {list(SPLITS)}")
    empty = [split for split in splits if not datalist[split]]
    if not empty:
        return
    zero = [split for split in empty if datalist["fractions"][split] == 0]
    hints = [f"give {' and '.join(zero)} a positive fraction"] if zero else []
    if len(zero) < len(empty):
        hints.append("with 3 or more labelled cases every split with a positive fraction gets one")
    hint = "; ".join(hints)
    where = f"each of {', '.join(splits)}" if len(splits) > 1 else splits[0]
    raise ValueError(
        f"{describe_splits(datalist)}: the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} "
        f"empty; expected at least one case in {where} ({hint})"
    )


def write_datalist(datalist: dict[str, Any], path: str | Path) -> Path:
    """Write ``datalist`` as JSON to ``path`` (parent folders created) and return the path.

    Image and label paths inside ``path``'s folder are written relative to it, others absolute.
    The file is written beside its target and renamed into place, so a concurrent reader (another
    rank of a distributed run) never sees half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = Path(os.path.abspath(path.parent))
    out = dict(datalist)
    for split in (*SPLITS, UNLABELLED):
        if split in out:
            out[split] = [_map_paths(entry, lambda p: _relative_to(p, base)) for entry in out[split]]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def load_datalist(path: str | Path, split: str = "training") -> list[dict[str, Any]]:
    """The entries of one split of the datalist at ``path``, with absolute image and label paths.

    Relative paths are resolved against the datalist's folder. Unlike
    :func:`monai.data.load_decathlon_datalist`, which this mirrors, only ``image`` and ``label``
    are treated as paths: MONAI also turns any other value that names an existing path into one,
    which rewrites ``case_id`` when the datalist sits beside the case folders.

    Args:
        path: the datalist JSON file.
        split: ``"training"`` (default), ``"validation"``, ``"test"`` or ``"unlabelled"``.

    Raises:
        ValueError: the file does not exist, is not valid JSON, or has no list ``split``.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"datalist {path} does not exist or is not a file")
    try:
        datalist = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"datalist {path} is not valid JSON: {err}") from None
    if not isinstance(datalist, dict) or not isinstance(datalist.get(split), list):
        lists = datalist.items() if isinstance(datalist, dict) else []
        available = [k for k, v in lists if isinstance(v, list) and all(isinstance(e, dict) for e in v)]
        raise ValueError(f"datalist {path} has no split {split!r}; expected one of {available}")
    base = path.parent
    # A decathlon "test" list may hold bare image paths.
    entries = [{"image": e} if isinstance(e, str) else e for e in datalist[split]]
    return [_map_paths(entry, lambda p: os.path.normpath(os.path.join(base, p))) for entry in entries]


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or any(f < 0 for f in values) or abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(
            f"split fractions {list(fractions)}; expected three non-negative numbers "
            "(training, validation, test) summing to 1"
        )
    return values


def _case_position(case_id: str, seed: int) -> float:
    """A number in [0, 1) fixed by ``seed`` and ``case_id`` alone."""
    digest = hashlib.sha256(f"{seed}/{case_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _assign_splits(case_ids: Sequence[str], seed: int, fractions: tuple[float, ...]) -> dict[str, str]:
    bounds = [sum(fractions[: i + 1]) for i in range(len(SPLITS))]
    position = {case_id: _case_position(case_id, seed) for case_id in case_ids}
    split_of = {
        case_id: next((s for s, b in zip(SPLITS, bounds) if u < b), SPLITS[-1])
        for case_id, u in position.items()
    }
    if len(case_ids) < len(SPLITS):
        return split_of
    for index, split in enumerate(SPLITS):
        members = [c for c in case_ids if split_of[c] == split]
        if members or fractions[index] == 0:
            continue
        # Borrow from the largest split the case whose position is nearest this split's interval.
        donor = max(SPLITS, key=lambda s: sum(split_of[c] == s for c in case_ids))
        low, high = bounds[index] - fractions[index], bounds[index]
        nearest = min(
            (c for c in case_ids if split_of[c] == donor),
            key=lambda c: (max(low - position[c], position[c] - high, 0.0), c),
        )
        split_of[nearest] = split
    return split_of


def case_entry(case: Case, allow_missing: bool = False, label: bool = True) -> dict[str, Any]:
    """A case's datalist entry: absolute paths, ``None`` for a sequence file it lacks and
    ``"missing"`` naming them (``allow_missing``), the label when it has one and ``label``."""
    image = case.image_allowing_missing() if allow_missing else case.image
    entry: dict[str, Any] = {
        "case_id": case.case_id,
        "layout": case.layout,
        "image": [None if p is None else os.path.abspath(p) for p in image]
        if isinstance(image, list)
        else os.path.abspath(image),
    }
    if allow_missing and case.missing_sequences:
        entry["missing"] = case.missing_sequences
    if label and case.label is not None:
        entry["label"] = os.path.abspath(case.label)
    return entry


def _map_paths(entry: dict[str, Any], fn: Callable[[str], str]) -> dict[str, Any]:
    out = dict(entry)
    for key in ("image", "label"):
        if isinstance(out.get(key), list):
            out[key] = [None if p is None else fn(p) for p in out[key]]
        elif isinstance(out.get(key), str):
            out[key] = fn(out[key])
    return out


def _relative_to(path: str, base: Path) -> str:
    # abspath, not resolve: a dataset reached through a symlink keeps that path.
    absolute = Path(os.path.abspath(path))
    return absolute.relative_to(base).as_posix() if absolute.is_relative_to(base) else str(absolute)
