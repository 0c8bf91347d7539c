"""Validate a BraTS dataset (or a datalist) before training: ``cggm-seg check``.

Every problem is reported at once, each naming the case, the file and what was expected:

- dataset level: no layout recognised, no cases found, a case id in two folders;
- datalist level: not JSON, no or unknown layout, an entry without image or label, a case id
  listed twice, modalities not in canonical order;
- file level: a missing file (a sequence, the 4D image or the label), a sequence or label found
  in two files (``x_t1.nii`` beside ``x_t1.nii.gz``), a file nibabel cannot read (truncated or
  corrupt ``.nii.gz``), the wrong number of dimensions, NaN or Inf voxels, a sequence without
  contrast (all zero, one value everywhere, or one value on every non-zero voxel), label values
  outside the layout's set;
- case level: sequences and label that differ in shape, voxel spacing or affine.

Files and folders under the dataset folder that look like data but belong to no case
(:func:`~cggm_seg.apps.brats.discovery.skipped_paths`) are listed in the report as skipped; they are
not problems, so the check still passes.

Files are opened read-only, one at a time, and only a summary of each is kept, so memory stays at
one volume whatever the dataset size.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm import tqdm

from cggm_seg.apps.brats.datalist import SPLITS, UNLABELLED
from cggm_seg.apps.brats.discovery import (
    Case,
    case_id_of,
    describe_layout,
    detect_layout,
    discover_cases,
    skipped_paths,
)
from cggm_seg.apps.brats.layouts import LAYOUTS, MODALITIES, Layout, get_layout

__all__ = ["Problem", "CheckReport", "check_dataset"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data.

    Attributes:
        case_id: the case concerned, or ``None`` for a dataset- or datalist-level problem.
        file: the file (or folder) concerned, or ``None``.
        message: what is wrong and what was expected.
    """

    case_id: str | None
    file: Path | None
    message: str


@dataclass
class CheckReport:
    """The outcome of :func:`check_dataset`.

    Attributes:
        root: the dataset folder checked, or ``None`` in datalist-only mode.
        datalist: the datalist checked, or ``None``.
        layout: the layout name used (given or detected), or ``None`` if none could be found.
        n_cases: the number of cases checked.
        problems: every problem found, dataset-level ones first, then per case in case order.
        skipped: files and folders under ``root`` that belong to no case, each with the reason
            (``case_id`` is ``None``); they do not fail the check.
        absent: with ``allow_missing_sequences``, each sequence file a case lacks (the case is
            used with that sequence zero-filled); they do not fail the check.
    """

    root: Path | None
    datalist: Path | None
    layout: str | None
    n_cases: int
    problems: list[Problem] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)
    absent: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def summary(self) -> str:
        """One line: how many cases were checked, how many problems were found and how many
        files or folders were skipped."""
        source = " + ".join(str(p) for p in (self.root, self.datalist) if p is not None)
        checked = (
            f"{self.n_cases} case{'s' * (self.n_cases != 1)} ({self.layout or 'unknown layout'}) in {source}"
        )
        skipped = (
            f"; {len(self.skipped)} file(s) or folder(s) skipped, in no case (listed above)"
            if self.skipped
            else ""
        )
        if self.absent:
            n_absent = len({p.case_id for p in self.absent})
            skipped += f"; {n_absent} case(s) miss sequences, zero-filled (listed above)"
        if self.ok:
            return f"OK: {checked}, no problems found{skipped}"
        n_cases = len({p.case_id for p in self.problems if p.case_id is not None})
        return (
            f"FAILED: {len(self.problems)} problem{'s' * (len(self.problems) != 1)} in {n_cases} of "
            f"{checked}{skipped}"
        )

    def format(self) -> str:
        """The readable report: problems grouped by case (paths relative to the dataset), then the summary."""
        by_case: dict[str | None, list[Problem]] = defaultdict(list)
        for problem in self.problems:
            by_case[problem.case_id].append(problem)
        lines = []
        # Dataset-level problems first, then cases in id order.
        for case_id, problems in sorted(
            by_case.items(), key=lambda item: (item[0] is not None, item[0] or "")
        ):
            lines.append(f"{case_id or '(dataset)'}:")
            lines += [
                f"  {self._display(p.file)}: {p.message}" if p.file else f"  {p.message}" for p in problems
            ]
        if self.skipped:
            lines.append("(skipped, in no case):")
            lines += [f"  {self._display(p.file)}: {p.message}" for p in self.skipped]
        if self.absent:
            lines.append("(sequences missing, allowed: zero-filled, predicted from the rest):")
            lines += [f"  {p.case_id}: {p.message}" for p in self.absent]
        lines.append(self.summary())
        return "\n".join(lines)

    def _display(self, path: Path) -> str:
        for base in (self.root, self.datalist.parent if self.datalist else None):
            if base is not None:
                absolute, base_abs = Path(os.path.abspath(path)), Path(os.path.abspath(base))
                if absolute.is_relative_to(base_abs) and absolute != base_abs:
                    return absolute.relative_to(base_abs).as_posix()
        return str(path)


def check_dataset(
    root: str | Path | None = None,
    layout: str | Layout | None = None,
    datalist: str | Path | None = None,
    *,
    spacing_tol: float = 1e-3,
    affine_tol: float = 1e-3,
    progress: bool = True,
    allow_missing_sequences: bool = False,
) -> CheckReport:
    """Check a dataset folder and/or a datalist, and report every problem found.

    With ``root``, the cases discovered under it are checked; with ``datalist``, the datalist's
    structure and the files it lists; with both, the datalist's cases that are not among the
    folder's cases are checked too. Nothing on disk is modified.

    Args:
        root: the dataset folder, or ``None`` to check only ``datalist``.
        layout: layout name or Layout; ``None`` (default) detects it from ``root`` or reads it
            from the datalist's ``layout`` field.
        datalist: a datalist JSON written by :func:`~cggm_seg.apps.brats.datalist.write_datalist`.
        spacing_tol: largest difference in voxel spacing (mm) between a case's files (default 1e-3).
        affine_tol: largest difference of any affine entry between a case's files (default 1e-3).
        progress: show a tqdm progress bar over cases on stderr (when it is a terminal).
        allow_missing_sequences: a case that lacks some (not all) of its sequence files is
            listed in :attr:`CheckReport.absent` instead of failing the check (for evaluation and
            inference, which zero-fill the missing sequences).

    Raises:
        ValueError: neither ``root`` nor ``datalist`` is given, or ``layout`` is not a known layout.
    """
    if root is None and datalist is None:
        raise ValueError("nothing to check: expected a dataset folder, a datalist, or both")
    root = Path(root) if root is not None else None
    datalist = Path(datalist) if datalist is not None else None
    chosen = get_layout(layout) if layout is not None else None
    problems: list[Problem] = []
    skipped: list[Problem] = []
    cases: list[Case] = []
    if root is not None:
        chosen, cases = _discover(root, chosen, problems, skipped)
    if datalist is not None:
        listed_layout, listed = _read_datalist(datalist, chosen, problems)
        chosen = chosen or listed_layout
        known = {_identity(c) for c in cases}
        cases += [c for c in listed if _identity(c) not in known]
    case_problems = []
    absent: list[Problem] = []
    for case in tqdm(
        cases, desc="checking", unit="case", file=sys.stderr, disable=None if progress else True
    ):
        if allow_missing_sequences and case.missing_sequences and not case.misses_every_sequence:
            absent.append(Problem(case.case_id, case.folder, "misses " + ", ".join(case.missing_sequences)))
            case = case.without_missing_sequences()
        case_problems += _check_case(case, get_layout(case.layout), spacing_tol, affine_tol)
    layout_name = chosen.name if chosen else None
    return CheckReport(root, datalist, layout_name, len(cases), problems + case_problems, skipped, absent)


def _discover(
    root: Path, layout: Layout | None, problems: list[Problem], skipped: list[Problem]
) -> tuple[Layout | None, list[Case]]:
    try:
        layout = layout or detect_layout(root)
        cases = discover_cases(root, layout)
    except ValueError as err:
        problems.append(Problem(None, root, str(err)))
        return layout, []
    skipped += [Problem(None, path, reason) for path, reason in skipped_paths(root, layout)]
    if not cases:
        problems.append(Problem(None, root, f"no cases found; expected {describe_layout(layout)}"))
    folders: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        folders[case.case_id].append(case)
    for case_id, same in folders.items():
        if len(same) > 1:
            where = ", ".join(str(c.folder) for c in same)
            problems += [
                Problem(
                    case_id,
                    c.folder,
                    f"case id found in {len(same)} folders ({where}); expected each case once",
                )
                for c in same[1:]
            ]
    return layout, cases


# --- datalists ---------------------------------------------------------------------------------------


def _identity(case: Case) -> tuple[str, tuple[str, ...]]:
    """A case's id and absolute files: the same case reached from a folder and from a datalist."""
    return case.case_id, tuple(os.path.abspath(p) for p in case.files)


def _read_datalist(
    path: Path, layout: Layout | None, problems: list[Problem]
) -> tuple[Layout | None, list[Case]]:
    """The cases a datalist lists (missing files recorded), adding datalist-level problems."""
    try:
        raw = json.loads(path.read_text())
    except OSError as err:
        problems.append(
            Problem(None, path, f"cannot read the datalist ({err.strerror}); expected a JSON file")
        )
        return layout, []
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        problems.append(Problem(None, path, f"not valid JSON ({err}); expected a decathlon-format datalist"))
        return layout, []
    if not isinstance(raw, dict):
        problems.append(Problem(None, path, "not a JSON object; expected a decathlon-format datalist"))
        return layout, []
    layout = _datalist_layout(path, raw.get("layout"), layout, problems)
    if layout is None:
        return None, []
    if "modalities" in raw and raw["modalities"] != list(MODALITIES):
        problems.append(
            Problem(
                None, path, f"modalities {raw['modalities']}; expected the canonical order {list(MODALITIES)}"
            )
        )
    splits = [s for s in (*SPLITS, UNLABELLED) if isinstance(raw.get(s), list)]
    if not splits:
        problems.append(Problem(None, path, f"no case lists; expected some of {[*SPLITS, UNLABELLED]}"))
    cases: dict[tuple[str, tuple[str, ...]], Case] = {}
    listed: dict[str, list[str]] = defaultdict(list)
    for split in splits:
        for index, entry in enumerate(raw[split]):
            where = f"{split}[{index}]"
            case = _datalist_case(path, layout, split, where, entry, problems)
            if case is not None:
                listed[case.case_id].append(where)
                cases.setdefault(_identity(case), case)
    for case_id, places in listed.items():
        if len(places) > 1:
            problems.append(
                Problem(
                    case_id,
                    path,
                    f"case listed {len(places)} times ({', '.join(places)}); expected each case once "
                    "(a case in two splits leaks between them)",
                )
            )
    return layout, list(cases.values())


def _datalist_layout(path: Path, named: Any, given: Layout | None, problems: list[Problem]) -> Layout | None:
    if named is not None and named not in LAYOUTS:
        problems.append(Problem(None, path, f"unknown layout {named!r}; expected one of {sorted(LAYOUTS)}"))
        return given
    if given is not None and named is not None and named != given.name:
        problems.append(
            Problem(
                None,
                path,
                f"datalist layout {named!r} differs from the layout given, {given.name!r}; expected the same",
            )
        )
    if given is None and named is None:
        problems.append(
            Problem(None, path, "no 'layout' field; expected one, or the layout given explicitly")
        )
        return None
    return given or LAYOUTS[named]


def _datalist_case(
    path: Path, layout: Layout, split: str, where: str, entry: Any, problems: list[Problem]
) -> Case | None:
    if isinstance(entry, str):
        entry = {"image": entry}
    expected_image = f"a list of {len(MODALITIES)} files" if not layout.is_4d else "one 4D file"
    if not isinstance(entry, dict) or "image" not in entry:
        problems.append(Problem(None, path, f"{where} has no 'image'; expected {expected_image} per entry"))
        return None
    base = path.parent
    image = entry["image"]
    listed_id = str(entry["case_id"]) if entry.get("case_id") else None
    if layout.is_4d:
        valid = isinstance(image, str)
    else:
        valid = (
            isinstance(image, list)
            and len(image) == len(MODALITIES)
            and all(isinstance(p, str) for p in image)
        )
    if not valid:
        problems.append(Problem(listed_id, path, f"{where} 'image' is {image!r}; expected {expected_image}"))
        return None
    image_paths = [base / p for p in image] if isinstance(image, list) else [base / image]
    case_id = listed_id or case_id_of(image_paths[0], layout)
    roles = list(MODALITIES) if not layout.is_4d else ["image"]
    missing = {role: p for role, p in zip(roles, image_paths) if not p.is_file()}
    label = base / entry["label"] if isinstance(entry.get("label"), str) else None
    if label is None and split != UNLABELLED:
        problems.append(
            Problem(case_id, path, f"{where} has no 'label'; expected a segmentation in '{split}'")
        )
    elif label is not None and not label.is_file():
        missing["seg"] = label
        label = None
    present = {role: p for role, p in zip(roles, image_paths) if role not in missing}
    return Case(
        case_id,
        layout.name,
        image_paths[0].parent,
        images={} if layout.is_4d else present,
        image_4d=present.get("image"),
        label=label,
        missing=missing,
    )


# --- cases ---------------------------------------------------------------------------------------------


@dataclass
class _Volume:
    """What the checks need of one file, so that its voxels can be freed at once."""

    role: str
    path: Path
    shape: tuple[int, ...]
    affine: np.ndarray
    spacing: tuple[float, ...]


def _role_name(role: str) -> str:
    return {"seg": "label", "image": "4D image"}.get(role, f"{role} sequence")


def _case_files(case: Case) -> Iterator[tuple[str, Path]]:
    if case.image_4d is not None:
        yield "image", case.image_4d
    yield from case.images.items()
    if case.label is not None:
        yield "seg", case.label


def _check_case(case: Case, layout: Layout, spacing_tol: float, affine_tol: float) -> list[Problem]:
    problems = [
        Problem(
            case.case_id, path, f"{_role_name(role)} file not found; expected {path.name} in {path.parent}"
        )
        for role, path in case.missing.items()
    ]
    problems += [
        Problem(
            case.case_id,
            paths[0],
            f"{_role_name(role)} also in {', '.join(p.name for p in paths[1:])}; expected one file "
            "(which one would be used is a guess: remove the others)",
        )
        for role, paths in case.duplicates.items()
    ]
    volumes = []
    for role, path in _case_files(case):
        try:
            image = nib.load(path)
            data = np.asanyarray(image.dataobj)
        except Exception as err:  # any failure to decode a user file is a finding, not a crash
            problems.append(
                Problem(
                    case.case_id,
                    path,
                    f"cannot read {_role_name(role)} ({type(err).__name__}: {err}); "
                    "expected a readable NIfTI file (truncated or corrupt?)",
                )
            )
            continue
        found = _content_problems(role, data, layout)
        problems += [Problem(case.case_id, path, message) for message in found]
        expected_ndim = 4 if role == "image" else 3
        if data.ndim == expected_ndim:
            spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
            volumes.append(_Volume(role, path, data.shape[:3], np.asarray(image.affine), spacing))
        del data
    problems += [
        Problem(case.case_id, path, message)
        for path, message in _grid_problems(volumes, spacing_tol, affine_tol)
    ]
    return problems


def _content_problems(role: str, data: np.ndarray, layout: Layout) -> list[str]:
    if role == "image" and (data.ndim != 4 or data.shape[3] != len(MODALITIES)):
        return [
            f"4D image of shape {data.shape}; expected (H, W, D, {len(MODALITIES)}) with channels "
            f"{', '.join(layout.msd_channels)}"
        ]
    if role != "image" and data.ndim != 3:
        return [f"{_role_name(role)} of shape {data.shape}; expected a 3D volume (H, W, D)"]
    messages = []
    if np.issubdtype(data.dtype, np.floating):
        counts = {"NaN": int(np.isnan(data).sum()), "Inf": int(np.isinf(data).sum())}
        found = " and ".join(f"{n} {kind}" for kind, n in counts.items() if n)
        if found:
            messages.append(f"{found} voxels; expected finite values")
    if role == "seg":
        messages += _label_problems(data, layout)
    elif role == "image":
        for c, modality in enumerate(layout.msd_channels):
            flat = _flat_contrast(data[..., c])
            if flat:
                messages.append(
                    f"channel {c} ({modality}): {flat}; expected an MRI sequence in every channel"
                )
    else:
        flat = _flat_contrast(data)
        if flat:
            messages.append(f"{flat}; expected an MRI {role} sequence")
    return messages


def _flat_contrast(volume: np.ndarray) -> str | None:
    """How ``volume`` lacks contrast (all zero, one value, one value inside the non-zero region), or None.

    BraTS volumes are zero outside the brain, so a volume whose non-zero voxels all hold one value
    (a mask, a failed conversion) carries no image either. Non-finite voxels are left to their own
    check.
    """
    if not np.any(volume):
        return "all voxels are zero"
    finite = volume[np.isfinite(volume)] if np.issubdtype(volume.dtype, np.floating) else volume.ravel()
    inside = finite[finite != 0]
    if inside.size == 0 or inside.min() != inside.max():
        return None
    if inside.size == volume.size:
        return f"all voxels are {inside[0]:g}"
    return f"all {inside.size} non-zero voxels are {inside[0]:g}"


def _label_problems(data: np.ndarray, layout: Layout) -> list[str]:
    values = np.unique(data)
    values = values[np.isfinite(values)] if np.issubdtype(values.dtype, np.floating) else values
    fractional = values[values != np.round(values)]
    if fractional.size:
        return [
            f"non-integer label values (e.g. {fractional[0]:g}); "
            f"expected integers in {sorted(layout.label_values)}"
        ]
    unexpected = sorted({int(v) for v in values} - layout.label_values)
    if not unexpected:
        return []
    present = {int(v) for v in values}
    fits = [name for name, other in LAYOUTS.items() if present <= other.label_values and name != layout.name]
    hint = f" (they fit the {' / '.join(fits)} layout: wrong layout?)" if fits else ""
    return [
        f"label values {unexpected} are not {layout.name} labels; expected values in "
        f"{sorted(layout.label_values)}{hint}"
    ]


def _grid_problems(
    volumes: list[_Volume], spacing_tol: float, affine_tol: float
) -> Iterator[tuple[Path, str]]:
    """Files of a case that are not on the grid of its first file."""
    if not volumes:
        return
    reference, *others = volumes
    name = f"{_role_name(reference.role)} {reference.path.name}"
    for volume in others:
        if volume.shape != reference.shape:
            yield (
                volume.path,
                (
                    f"shape {volume.shape} differs from {name} {reference.shape}; "
                    "expected all files of a case on one voxel grid"
                ),
            )
            continue
        spacing_diff = max(abs(a - b) for a, b in zip(volume.spacing, reference.spacing))
        if spacing_diff > spacing_tol:
            yield (
                volume.path,
                (
                    f"voxel spacing {_fmt(volume.spacing)} mm differs from {name} "
                    f"{_fmt(reference.spacing)} mm; expected equal within {spacing_tol:g} mm"
                ),
            )
            continue
        affine_diff = float(np.abs(volume.affine - reference.affine).max())
        if affine_diff > affine_tol:
            yield (
                volume.path,
                (
                    f"affine differs from {name} by up to {affine_diff:.4g}; "
                    f"expected co-registered files with equal affines within {affine_tol:g}"
                ),
            )


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"
