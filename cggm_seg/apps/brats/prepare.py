"""One call from a dataset folder to checked, split datalists: what a bundle runs before training.

``prepare_dataset`` is the boundary where user data enters a training run:

1. the folder does not exist and lies under the cggm_seg cache (the bundle's default): the
   phantom dataset is generated there, once (written to a temporary folder and renamed, so an
   interrupted or concurrent run never sees half a dataset);
2. ``check_dataset`` runs on the folder and any problem stops the run with the full report;
   files and folders that belong to no case are logged as a warning;
3. the cases are split with the seeded, id-stable rule of :func:`make_datalist`, the number of
   cases and the split sizes are logged, a split the run needs that is empty stops it, and the
   datalist is written into the run folder (never into the dataset folder, which may be
   read-only and is not ours to modify).

The log lines go to the ``cggm_seg.data`` logger, which a bundle's ``logging.conf`` prints.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cggm_seg.apps.brats.check import CheckReport, check_dataset
from cggm_seg.apps.brats.datalist import (
    DEFAULT_FRACTIONS,
    SPLITS,
    case_entry,
    describe_splits,
    load_datalist,
    make_datalist,
    require_splits,
    write_datalist,
)
from cggm_seg.apps.brats.discovery import describe_layout, detect_layout, discover_cases

__all__ = [
    "cache_root",
    "default_phantom_dir",
    "run_name",
    "prepare_dataset",
    "split_cases",
    "inference_datalist",
    "check_roi_size",
    "DatasetCheckError",
]


logger = logging.getLogger("cggm_seg.data")

#: How many skipped files or folders the warning of :func:`prepare_dataset` names.
_SKIPPED_SHOWN = 5


class DatasetCheckError(ValueError):
    """The dataset failed ``cggm-seg check``; the message is the whole report."""


def cache_root() -> Path:
    """Where generated data is cached: ``$CGGM_SEG_CACHE``, else ``~/.cache/cggm_seg``."""
    env = os.environ.get("CGGM_SEG_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cggm_seg"


def default_phantom_dir(
    cases: int = 24, seed: int = 0, layout: str = "brats2021", spacing: float = 2.0
) -> str:
    """The cache folder of the default phantom dataset with these settings (not created here)."""
    return str(cache_root() / f"phantom-{layout}-{cases}cases-seed{seed}-{spacing:g}mm")


def run_name(dataset_dir: str | Path, variant: str, prefix: str = "brats") -> str:
    """The name of a training run's folder: ``<prefix>_<variant>`` on the generated phantom (a
    folder under :func:`cache_root`), ``<prefix>_<dataset folder's name>_<variant>`` on any other
    dataset (characters other than letters, digits, ``.``, ``_`` and ``-`` replaced by ``_``).

    Runs on different datasets then land in different folders: the quick start's phantom run
    (``brats_cggm``) and one with ``--dataset_dir /data/BraTS2021`` (``brats_BraTS2021_cggm``).

    Args:
        dataset_dir: the run's dataset folder.
        variant: what else tells the run apart, e.g. the balancing method (``"cggm"``).
        prefix: the experiment. Defaults to ``"brats"``.
    """
    folder = Path(os.path.abspath(Path(dataset_dir).expanduser()))
    if Path(os.path.abspath(cache_root())) in folder.parents:
        return f"{prefix}_{variant}"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", folder.name) or "dataset"
    return f"{prefix}_{name}_{variant}"


def _generate_phantom(folder: Path, cases: int, seed: int, layout: str, spacing: float) -> None:
    from cggm_seg.apps.brats.phantom import PhantomConfig, write_phantom_dataset

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write_phantom_dataset(tmp, cases, seed=seed, layout=layout, config=PhantomConfig(spacing=spacing))
    try:
        tmp.rename(folder)
    except OSError:
        # another process finished the same dataset first: theirs is identical (same seed)
        shutil.rmtree(tmp, ignore_errors=True)
        if not folder.is_dir():
            raise


def prepare_dataset(
    dataset_dir: str | Path,
    output_dir: str | Path,
    layout: str | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    phantom_cases: int = 24,
    phantom_seed: int = 0,
    phantom_layout: str = "brats2021",
    phantom_spacing: float = 2.0,
    check: bool = True,
    required_splits: Sequence[str] = SPLITS,
    resume: bool = False,
    allow_missing: bool = False,
) -> dict[str, Any]:
    """Check ``dataset_dir``, split it, write ``output_dir/datalist.json`` and return the splits.

    Args:
        dataset_dir: a BraTS 2018-2021, BraTS 2023 or MSD Task01 folder. A missing folder under
            :func:`cache_root` is filled with the phantom dataset first.
        output_dir: the run folder; ``datalist.json`` is written there.
        layout: the dataset layout, or None to detect it.
        seed: split seed.
        fractions: train / validation / test fractions.
        phantom_cases, phantom_seed, phantom_layout, phantom_spacing: the phantom to generate
            when ``dataset_dir`` is a missing cache folder.
        check: run ``check_dataset`` first (turn off only for data checked already).
        required_splits: the splits the run uses, each of which must hold a case (default: all
            three; an evaluation of every case needs none).
        allow_missing: take cases that lack some of their sequence files (evaluation only: the
            check lists them, per case, and the datalist gives ``None`` for those files, which
            ``LoadSequencesd`` zero-fills).
        resume: the run will resume from the epoch checkpoints in ``output_dir/models`` if there
            are any. A datalist that differs from that run's ``datalist.json`` then goes to
            ``datalist.new.json`` instead, so that a resume refused as another run's (its
            definition differs) leaves the run being resumed as it was.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...], "layout": name,
        "datalist": path}`` with entries ``{"image", "label", "case_id", "layout"}`` and absolute paths.

    Raises:
        FileNotFoundError: ``dataset_dir`` does not exist (and is not a cache folder).
        DatasetCheckError: the dataset has problems; the message lists them all.
        ValueError: a split of ``required_splits`` is empty (too few cases for the fractions);
            the message gives the number of cases and the size of each split.
    """
    dataset_dir = Path(dataset_dir).expanduser()
    if not dataset_dir.exists():
        if cache_root() in dataset_dir.parents:
            _generate_phantom(dataset_dir, phantom_cases, phantom_seed, phantom_layout, phantom_spacing)
        else:
            raise FileNotFoundError(
                f"dataset_dir {dataset_dir} does not exist; give a BraTS 2018-2021, BraTS 2023 or MSD "
                "Task01 folder with --dataset_dir, or leave it out to use the generated phantom dataset"
            )
    if check:
        report = check_dataset(dataset_dir, layout=layout, allow_missing_sequences=allow_missing)
        if report.absent:
            logger.warning(
                f"{dataset_dir}: {len(report.absent)} case(s) miss sequences, zero-filled: "
                + "; ".join(f"{p.case_id} {p.message}" for p in report.absent)
            )
        if not report.ok:
            raise DatasetCheckError(f"the dataset failed its check, nothing was trained:\n{report.format()}")
        layout = report.layout or layout
        _log_skipped(dataset_dir, report)
    cases = discover_cases(dataset_dir, layout)
    datalist = make_datalist(cases, seed=seed, fractions=fractions, allow_missing=allow_missing)
    found = f"{len(cases)} {datalist['layout']} case{'s' * (len(cases) != 1)} found"
    logger.info(f"{dataset_dir}: {found}; {describe_splits(datalist)}")
    try:
        require_splits(datalist, required_splits)
    except ValueError as err:
        raise ValueError(f"{dataset_dir}: {err}; nothing was trained") from None
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "datalist.json"
    from cggm_seg.handlers.checkpoint import latest_checkpoint  # torch and Ignite: only when needed

    if resume and path.is_file() and latest_checkpoint(output_dir / "models") is not None:
        kept = write_datalist(datalist, output_dir / "datalist.new.json")
        if kept.read_text() != path.read_text():
            logger.warning(f"{path} (the run to resume) kept; this run's datalist differs: {kept}")
            path = kept
        else:
            kept.unlink()
    path = write_datalist(datalist, path) if path.name == "datalist.json" else path
    splits: dict[str, Any] = {s: load_datalist(path, s) for s in ("training", "validation", "test")}
    splits["layout"] = datalist["layout"]
    splits["datalist"] = str(path)
    return splits


def _log_skipped(dataset_dir: Path, report: CheckReport) -> None:
    if not report.skipped:
        return
    shown = "; ".join(
        f"{p.file.relative_to(dataset_dir)}: {p.message}" for p in report.skipped[:_SKIPPED_SHOWN]
    )
    more = len(report.skipped) - _SKIPPED_SHOWN
    rest = f"; and {more} more (`cggm-seg check {dataset_dir}` lists them all)" if more > 0 else ""
    logger.warning(
        f"{dataset_dir}: {len(report.skipped)} file(s) or folder(s) belong to no case and are not used: "
        f"{shown}{rest}"
    )


def split_cases(data: dict[str, Any], split: str) -> list[dict[str, Any]]:
    """The labelled cases of one split of :func:`prepare_dataset`'s result, or of all (``"all"``).

    Raises:
        ValueError: an unknown split name, or a split without cases.
    """
    splits = ("training", "validation", "test")
    if split not in (*splits, "all"):
        raise ValueError(f"split must be one of {[*splits, 'all']}, got {split!r}.")
    cases = [c for s in splits for c in data[s]] if split == "all" else list(data[split])
    if not cases:
        raise ValueError(f"the {split!r} split of this dataset has no labelled case to evaluate.")
    return cases


def inference_datalist(
    dataset_dir: str | Path, layout: str | None = None, allow_missing: bool = False
) -> list[dict[str, Any]]:
    """Every case of ``dataset_dir``, labelled or not, as datalist entries for inference.

    Unlike :func:`prepare_dataset` nothing is split, generated or written, and a case without a
    segmentation is as good as one with: only the images are needed.

    Args:
        dataset_dir: a BraTS 2018-2021, BraTS 2023 or MSD Task01 folder (for MSD, the cases of
            ``imagesTr`` and ``imagesTs``).
        layout: the dataset layout, or None to detect it.
        allow_missing: take cases that lack some (not all) sequence files: ``None`` in their
            place (``LoadSequencesd`` zero-fills them) and ``"missing"`` naming them; each such
            case is logged.

    Returns:
        ``[{"image": 4 paths in MODALITIES order or the MSD 4D path, "case_id": id, "layout": name}, ...]``
        sorted by case id, with absolute paths.

    Raises:
        FileNotFoundError: ``dataset_dir`` does not exist or is not a folder.
        ValueError: no case is found, a case misses an image file or has two files for one, or a
            case id is found twice (its predictions would overwrite each other); the message names
            the folder or the case.
    """
    dataset_dir = Path(dataset_dir).expanduser()
    if not dataset_dir.is_dir():
        generated = cache_root() in dataset_dir.parents
        hint = " (the phantom dataset is generated by a training run)" if generated else ""
        raise FileNotFoundError(
            f"dataset_dir {dataset_dir} does not exist or is not a folder{hint}; give a BraTS 2018-2021, "
            "BraTS 2023 or MSD Task01 folder with --dataset_dir"
        )
    layout = detect_layout(dataset_dir).name if layout is None else layout
    cases = discover_cases(dataset_dir, layout)
    if not cases:
        raise ValueError(f"no case found in {dataset_dir}; expected {describe_layout(layout)}")
    hint = "" if allow_missing else " (--allow_missing_sequences True predicts from the others)"
    problems = [
        f"case {c.case_id!r} in {c.folder} misses "
        + ", ".join(f"{name} (expected {path})" for name, path in c.missing.items() if name != "seg")
        + (hint if c.missing_sequences and not c.misses_every_sequence else "")
        for c in cases
        if set(c.missing) - {"seg"} and not (allow_missing and not c.misses_every_sequence)
    ]
    problems += [
        f"case {c.case_id!r} in {c.folder}: {c.describe_duplicate(role)}"
        for c in cases
        for role in c.duplicates
        if role != "seg"
    ]
    folders: dict[str, list[str]] = {}
    for c in cases:
        folders.setdefault(c.case_id, []).append(str(c.folder))
    problems += [
        f"case id {case_id!r} found {len(where)} times: in {', '.join(where)}; expected once"
        for case_id, where in folders.items()
        if len(where) > 1
    ]
    if problems:
        raise ValueError(f"cannot run inference on {dataset_dir}:\n  " + "\n  ".join(problems))
    for c in cases:
        if allow_missing and c.missing_sequences:
            logger.warning(f"case {c.case_id}: {', '.join(c.missing_sequences)} missing, zero-filled")
    return [case_entry(c, allow_missing, label=False) for c in cases]


def check_roi_size(data: dict[str, Any], roi_size: Any, split: str = "training") -> list[int]:
    """Check that the training crop fits inside at least one volume of ``split``; returns it as a list.

    A crop larger than every volume would only crop padding around each case (and cost its full
    size in memory and time), so it is refused before anything is trained. Only the image headers
    are read.

    Args:
        data: :func:`prepare_dataset`'s result.
        roi_size: the crop, one size per spatial axis (the bundles' ``roi_size``).

    Raises:
        ValueError: a crop that is not three positive sizes, or larger than every volume on some axis.
    """
    import nibabel as nib

    roi = [int(r) for r in roi_size] if isinstance(roi_size, (list, tuple)) else [int(roi_size)] * 3
    if len(roi) != 3 or min(roi) < 1:
        raise ValueError(f"roi_size must be three positive sizes (D, H, W), got {roi_size}.")
    shapes = []
    for case in data.get(split, []):
        image = case["image"]
        image = next(p for p in image if p is not None) if isinstance(image, (list, tuple)) else image
        shapes.append([int(s) for s in nib.load(image).shape[:3]])
    if shapes and not any(all(r <= s for r, s in zip(roi, shape)) for shape in shapes):
        largest = [max(s[d] for s in shapes) for d in range(3)]
        fits = [min(r, g) for r, g in zip(roi, largest)]
        raise ValueError(
            f"roi_size {roi} is larger than every {split} volume (largest per axis: {largest} voxels): "
            f"the crop would hold mostly padding. Give --roi_size at most {fits}."
        )
    return roi
