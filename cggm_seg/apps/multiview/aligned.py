"""CMU-MOSI / IEMOCAP aligned features: the pickle format the public CGGM and MulT code read.

The file is a pickled dict of three splits, ``train``, ``valid`` and ``test``; each split holds
one array per modality, ``text``, ``audio`` and ``vision``, of shape ``N x T x D`` (N samples,
T word-aligned steps, D features of that modality; T is the same for every modality), and
``labels``:

- CMU-MOSI (``dataset="mosi"``): sentiment scores in [-3, 3], ``N``, ``N x 1`` or ``N x 1 x 1``
  (regression);
- IEMOCAP (``dataset="iemocap"``): one emotion class per sample, as indices ``N`` / ``N x 1``,
  one-hot ``N x C``, or MulT's per-emotion one-hot pairs ``N x C x 2`` (column 1 = "is this
  emotion"; exactly one emotion per sample).

:func:`load_aligned_features` checks all of it and fails naming the split, the modality and what
was expected; it returns a :class:`~cggm_seg.apps.multiview.views.ViewData` whose inputs are the
modalities concatenated on the feature axis (``N x T x sum(D)``), standardised per feature with
the training split's statistics. Real CMU-MOSI audio features hold ``-inf`` values;
``nonfinite="zero"`` replaces non-finite values by 0 before standardising (as the MulT code does)
and says how many it replaced.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cggm_seg.apps.multiview.view_data import ViewData, standardise

__all__ = [
    "ALIGNED_SPLITS",
    "ALIGNED_MODALITIES",
    "load_aligned_features",
    "write_aligned_features",
    "synthetic_aligned_features",
]

#: the pickle's splits, and the toolkit's names for them
ALIGNED_SPLITS: dict[str, str] = {"train": "training", "valid": "validation", "test": "test"}
#: the modalities of the format, in input order
ALIGNED_MODALITIES: tuple[str, ...] = ("text", "audio", "vision")
#: CMU-MOSI sentiment range
MOSI_RANGE = (-3.0, 3.0)

logger = logging.getLogger("cggm_seg.data")


def _find_pickle(path: Path) -> Path:
    if path.is_dir():
        found = sorted(path.glob("*.pkl"))
        if len(found) != 1:
            raise FileNotFoundError(
                f"{path} holds {len(found)} .pkl files ({[f.name for f in found]}); give the file itself."
            )
        return found[0]
    if not path.is_file():
        raise FileNotFoundError(f"no aligned-feature pickle at {path}.")
    return path


def _labels(raw: Any, split: str, dataset: str, n: int, num_classes: int | None) -> np.ndarray:
    where = f"split {split!r}, labels"
    labels = np.asarray(raw)
    if labels.shape[:1] != (n,):
        raise ValueError(
            f"{where}: expected {n} labels (one per sample of the modalities), got shape {labels.shape}."
        )
    if not np.issubdtype(labels.dtype, np.number):
        raise ValueError(f"{where}: expected numbers, got dtype {labels.dtype}.")
    if not np.isfinite(labels).all():
        raise ValueError(f"{where}: {int((~np.isfinite(labels)).sum())} non-finite labels.")
    if dataset == "mosi":
        if labels.size != n:
            raise ValueError(
                f"{where}: expected one sentiment score per sample (N, N x 1 or N x 1 x 1), "
                f"got shape {labels.shape}."
            )
        labels = labels.reshape(n).astype(np.float32)
        low, high = MOSI_RANGE
        bad = (labels < low) | (labels > high)
        if bad.any():
            raise ValueError(
                f"{where}: CMU-MOSI sentiment scores lie in [{low:g}, {high:g}]; {int(bad.sum())} do not "
                f"(e.g. {labels[bad][0]:g})."
            )
        return labels[:, None]
    # iemocap: class indices
    if labels.ndim == 3 and labels.shape[2] == 2:  # MulT: per-emotion (not, is) pairs
        active = labels[:, :, 1] > 0.5
        if not (active.sum(axis=1) == 1).all():
            raise ValueError(
                f"{where}: the N x C x 2 format needs exactly one emotion per sample; "
                f"{int((active.sum(axis=1) != 1).sum())} samples have another count."
            )
        labels = active.argmax(axis=1)
    elif labels.ndim == 2 and labels.shape[1] > 1:  # one-hot
        if not (np.isin(labels, (0, 1)).all() and (labels.sum(axis=1) == 1).all()):
            raise ValueError(f"{where}: an N x C label array must be one-hot (one 1 per row).")
        labels = labels.argmax(axis=1)
    elif labels.size == n:
        labels = labels.reshape(n)
        if not np.allclose(labels, np.round(labels)):
            raise ValueError(
                f"{where}: class labels must be whole numbers, "
                f"got e.g. {labels[labels != np.round(labels)][0]}."
            )
    else:
        raise ValueError(
            f"{where}: expected class indices N, one-hot N x C or N x C x 2, got shape {labels.shape}."
        )
    labels = labels.astype(np.int64)
    if num_classes is not None and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{where}: class labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}."
        )
    if labels.min() < 0:
        raise ValueError(f"{where}: class labels must be >= 0, got {labels.min()}.")
    return labels


def load_aligned_features(
    path: str | Path,
    dataset: str = "mosi",
    modalities: Sequence[str] = ALIGNED_MODALITIES,
    nonfinite: str = "raise",
    num_classes: int | None = None,
) -> ViewData:
    """Read and check a CMU-MOSI / IEMOCAP aligned-feature pickle (see the module docstring).

    Args:
        path: the ``.pkl`` file, or a folder holding exactly one.
        dataset: ``"mosi"`` (regression, scores in [-3, 3]) or ``"iemocap"`` (classification).
        modalities: the modalities to read, in input order: keys present in every split (the
            format's are text, audio and vision; a pickle may carry others under their own names).
        nonfinite: ``"raise"`` (default): fail on NaN / inf features; ``"zero"``: replace them by 0.
        num_classes: IEMOCAP classes; labels must lie in [0, num_classes). Default: from the
            largest label (4 for the usual neutral / happy / sad / angry).

    Raises:
        FileNotFoundError: no such file.
        ValueError: anything that does not match the format, naming split, modality and expectation.
    """
    if dataset not in ("mosi", "iemocap"):
        raise ValueError(f"dataset must be 'mosi' or 'iemocap', got {dataset!r}.")
    if nonfinite not in ("raise", "zero"):
        raise ValueError(f"nonfinite must be 'raise' or 'zero', got {nonfinite!r}.")
    modalities = tuple(modalities)
    if not modalities or len(set(modalities)) != len(modalities):
        raise ValueError(f"need distinct modalities, got {list(modalities)}.")
    file = _find_pickle(Path(path))
    with open(file, "rb") as f:
        content = pickle.load(f)
    if not isinstance(content, Mapping):
        raise ValueError(
            f"{file}: expected a dict of splits {list(ALIGNED_SPLITS)}, got {type(content).__name__}."
        )
    missing = [s for s in ALIGNED_SPLITS if s not in content]
    if missing:
        raise ValueError(
            f"{file}: no split {missing} (found {sorted(map(str, content))}; "
            f"expected {list(ALIGNED_SPLITS)})."
        )

    arrays: dict[str, dict[str, np.ndarray]] = {}
    labels: dict[str, np.ndarray] = {}
    widths: dict[str, int] = {}
    for split in ALIGNED_SPLITS:
        part = content[split]
        if not isinstance(part, Mapping):
            raise ValueError(
                f"split {split!r}: expected a dict of modalities and 'labels', got {type(part).__name__}."
            )
        absent = [k for k in (*modalities, "labels") if k not in part]
        if absent:
            raise ValueError(f"split {split!r}: no {absent} (keys: {sorted(map(str, part))}).")
        arrays[split] = {}
        for m in modalities:
            a = np.asarray(part[m])
            where = f"split {split!r}, modality {m!r}"
            if a.ndim != 3:
                raise ValueError(f"{where}: expected an array N x T x D (3 dims), got shape {a.shape}.")
            if not np.issubdtype(a.dtype, np.number):
                raise ValueError(f"{where}: expected numbers, got dtype {a.dtype}.")
            a = a.astype(np.float32)
            bad = ~np.isfinite(a)
            if bad.any():
                if nonfinite == "raise":
                    raise ValueError(
                        f"{where}: {int(bad.sum())} non-finite values (NaN or inf); pass nonfinite='zero' "
                        "to replace them by 0 (real CMU-MOSI audio holds -inf)."
                    )
                logger.warning(f"{where}: replaced {int(bad.sum())} non-finite values by 0")
                a = np.where(bad, 0.0, a).astype(np.float32)
            if m in widths and a.shape[2] != widths[m]:
                raise ValueError(
                    f"{where}: {a.shape[2]} features per step, but {widths[m]} in split 'train'."
                )
            widths.setdefault(m, int(a.shape[2]))
            arrays[split][m] = a
        counts = {m: a.shape[0] for m, a in arrays[split].items()}
        counts["labels"] = len(np.asarray(part["labels"]))
        if len(set(counts.values())) != 1:
            raise ValueError(
                f"split {split!r}: the modalities and labels have different sample counts: {counts}."
            )
        lengths = {m: a.shape[1] for m, a in arrays[split].items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(
                f"split {split!r}: aligned features need one sequence length T for every modality, "
                f"got {lengths}."
            )
        if counts["labels"] == 0:
            raise ValueError(f"split {split!r} is empty.")
        labels[split] = _labels(part["labels"], split, dataset, counts["labels"], num_classes)

    stacked = [np.concatenate([arrays[s][m] for m in modalities], axis=2) for s in ALIGNED_SPLITS]
    # per feature, over samples and steps, with the training split's statistics
    x = {ALIGNED_SPLITS[s]: torch.from_numpy(a) for s, a in zip(ALIGNED_SPLITS, standardise(*stacked))}
    y = {ALIGNED_SPLITS[s]: torch.from_numpy(v) for s, v in labels.items()}
    out = ViewData(
        name=dataset,
        task="regression" if dataset == "mosi" else "classification",
        metrics=dataset,
        views={m: widths[m] for m in modalities},
        x=x,
        y=y,
    )
    if dataset == "iemocap":
        out.num_classes = num_classes or int(max(int(v.max()) for v in labels.values())) + 1
    return out


def write_aligned_features(
    path: str | Path,
    splits: Mapping[str, Mapping[str, Any]],
) -> Path:
    """Write a dict of splits in the aligned-feature pickle format (for tests and small exports)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({k: dict(v) for k, v in splits.items()}, f)
    return path


def synthetic_aligned_features(
    dataset: str = "mosi",
    samples: Mapping[str, int] | None = None,
    steps: int = 8,
    widths: Mapping[str, int] | None = None,
    num_classes: int = 4,
    seed: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """Splits in the aligned-feature format with a learnable signal, for tests and for trying the
    format without the data: each sample's label is a noisy function of a direction in every
    modality (strongest in ``text``, weakest in ``vision``), as in the real datasets, where text
    dominates.

    Args:
        dataset: ``"mosi"`` (scores in [-3, 3]) or ``"iemocap"`` (``num_classes`` classes).
        samples: split -> samples. Default train 96, valid 32, test 32.
        steps: sequence length T.
        widths: modality -> features per step. Default text 12, audio 5, vision 7.
    """
    rng = np.random.default_rng(seed)
    samples = dict(samples or {"train": 96, "valid": 32, "test": 32})
    widths = dict(widths or {"text": 12, "audio": 5, "vision": 7})
    strength = dict(zip(widths, (1.0, 0.6, 0.3, 0.3)))
    directions = {m: rng.standard_normal((num_classes, w)) for m, w in widths.items()}
    out: dict[str, dict[str, np.ndarray]] = {}
    for split, n in samples.items():
        latent = rng.uniform(-1, 1, n) if dataset == "mosi" else rng.integers(0, num_classes, n)
        part: dict[str, np.ndarray] = {}
        for m, w in widths.items():
            noise = rng.standard_normal((n, steps, w)).astype(np.float32)
            if dataset == "mosi":
                signal = latent[:, None, None] * directions[m][0][None, None, :]
            else:
                signal = directions[m][latent][:, None, :]
            part[m] = (noise + 2.0 * strength[m] * signal).astype(np.float32)
        if dataset == "mosi":
            part["labels"] = np.clip(3 * latent + 0.2 * rng.standard_normal(n), -3, 3).astype(np.float32)[
                :, None, None
            ]
        else:
            part["labels"] = latent.astype(np.int64)
        out[split] = part
    return out
