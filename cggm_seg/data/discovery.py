"""Find the cases of a BraTS dataset on disk, whatever its layout.

Discovery is tolerant: :func:`discover_cases` returns every case it can see, with the files it
expected but did not find recorded in :attr:`Case.missing`, so that ``cggm-seg check`` can report
all problems at once. Code that needs a usable dataset calls :func:`require_complete`, which
raises on the first look at an incomplete or duplicated case.

Per-file layouts (``brats2021``, ``brats2023``) are searched recursively under the root: a case
is the set of files ``<case><sep><suffix>.nii(.gz)`` in one folder, so the root may be the
folder of case folders or any parent of it. The ``msd`` layout is read from ``imagesTr``,
``labelsTr`` and ``imagesTs`` (``labelsTs`` too, if present) directly under the root.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cggm_seg.data.layouts import LAYOUTS, MODALITIES, Layout, get_layout

__all__ = ["Case", "discover_cases", "detect_layout", "require_complete", "describe_layout", "case_id_of"]

#: MSD sub-folders holding images, and the label folder beside each.
_MSD_SUBSETS: tuple[tuple[str, str], ...] = (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs"))

_NIFTI = re.compile(r"^(?P<stem>.+?)(?P<ext>\.nii(?:\.gz)?)$")


@dataclass(frozen=True)
class Case:
    """One case (subject) of a BraTS dataset as found on disk.

    Attributes:
        case_id: the case identifier (``BraTS2021_00000``, ``BraTS-GLI-00000-000``, ``BRATS_001``).
        layout: name of the layout the case follows (a key of :data:`~cggm_seg.data.layouts.LAYOUTS`).
        folder: the folder holding the case's images (its case folder, or MSD ``imagesTr``/``imagesTs``).
        images: per-file layouts: canonical modality -> file, in
            :data:`~cggm_seg.data.layouts.MODALITIES` order, for the sequences found; empty for ``msd``.
        image_4d: ``msd``: the 4D image (channels last, in the layout's ``msd_channels`` order);
            ``None`` for per-file layouts or when the file is missing.
        label: the segmentation file, or ``None`` when the case has none.
        missing: files the layout expects but that are not on disk: a modality name, ``"image"``
            (the MSD 4D image) or ``"seg"`` -> the path where the file was expected. A case of an
            unlabelled release (no case has a label, or MSD ``imagesTs``) does not miss its label.
    """

    case_id: str
    layout: str
    folder: Path
    images: dict[str, Path] = field(default_factory=dict)
    image_4d: Path | None = None
    label: Path | None = None
    missing: dict[str, Path] = field(default_factory=dict)

    @property
    def is_complete(self) -> bool:
        """True when no expected file is missing."""
        return not self.missing

    @property
    def image(self) -> list[Path] | Path:
        """The image as a datalist gives it to ``LoadImaged``: 4 files in canonical order, or the 4D file.

        Raises:
            ValueError: the case misses an image file.
        """
        missing_images = sorted(set(self.missing) - {"seg"})
        if missing_images:
            raise ValueError(
                f"case {self.case_id!r} in {self.folder} misses {', '.join(missing_images)}: "
                f"expected {', '.join(str(self.missing[m]) for m in missing_images)}"
            )
        if self.image_4d is not None:
            return self.image_4d
        return [self.images[m] for m in MODALITIES]

    @property
    def files(self) -> list[Path]:
        """Every file of the case that exists: images (canonical order) then label."""
        found = [self.image_4d] if self.image_4d is not None else list(self.images.values())
        return found + ([self.label] if self.label is not None else [])


def detect_layout(root: str | Path) -> Layout:
    """Recognise the layout of the dataset under ``root``.

    ``msd`` is recognised by an ``imagesTr`` or ``imagesTs`` folder directly under ``root``, a
    per-file layout by at least one file named after its pattern anywhere under ``root``.

    Raises:
        ValueError: ``root`` is not a folder, or no layout or more than one layout matches (the
            message names the folder, what was found and what was expected).
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"dataset folder {root} does not exist or is not a folder")
    evidence: dict[str, list[str]] = {}
    msd_dirs = [images for images, _ in _MSD_SUBSETS if (root / images).is_dir()]
    if msd_dirs:
        evidence["msd"] = [f"{d}/" for d in msd_dirs]
    names = [p.name for p in _nifti_files(root)]
    for layout in LAYOUTS.values():
        if layout.is_4d:
            continue
        pattern = _file_pattern(layout)
        hits = [name for name in names if pattern.match(name)]
        if hits:
            evidence[layout.name] = hits
    if len(evidence) == 1:
        return LAYOUTS[next(iter(evidence))]
    if not evidence:
        raise ValueError(
            f"no BraTS layout recognised in {root}; expected one of: "
            + "; ".join(describe_layout(layout) for layout in LAYOUTS.values())
        )
    found = "; ".join(f"{name} ({len(hits)} matches, e.g. {hits[0]})" for name, hits in evidence.items())
    raise ValueError(
        f"the files in {root} match several BraTS layouts: {found}; "
        f"pass the layout explicitly (one of {sorted(evidence)})"
    )


def discover_cases(root: str | Path, layout: str | Layout | None = None) -> list[Case]:
    """All cases under ``root``, sorted by case id (then folder), missing files recorded.

    Args:
        root: the dataset folder (for per-file layouts, any folder above the case folders).
        layout: a layout name or :class:`~cggm_seg.data.layouts.Layout`; ``None`` (default)
            detects it with :func:`detect_layout`.

    Returns:
        The cases found, possibly empty; a case id found in two folders gives two cases.

    Raises:
        ValueError: ``root`` is not a folder, or ``layout`` is ``None`` and cannot be detected.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"dataset folder {root} does not exist or is not a folder")
    layout = detect_layout(root) if layout is None else get_layout(layout)
    cases = _discover_msd(root, layout) if layout.is_4d else _discover_per_file(root, layout)
    return sorted(cases, key=lambda c: (c.case_id, str(c.folder)))


def require_complete(cases: Sequence[Case]) -> list[Case]:
    """Return ``cases`` as a list if every case is complete and every case id unique.

    Raises:
        ValueError: listing every incomplete case with the files it misses, and every case id
            found more than once with its folders.
    """
    errors = [
        f"case {c.case_id!r} in {c.folder} misses "
        + ", ".join(f"{name} (expected {path})" for name, path in c.missing.items())
        for c in cases
        if c.missing
    ]
    folders: dict[str, list[Path]] = defaultdict(list)
    for c in cases:
        folders[c.case_id].append(c.folder)
    errors += [
        f"case id {case_id!r} found {len(where)} times: in {', '.join(map(str, where))}; expected once"
        for case_id, where in folders.items()
        if len(where) > 1
    ]
    if errors:
        raise ValueError(
            f"{len(errors)} problem(s) with the dataset (run `cggm-seg check` for a full report):\n  "
            + "\n  ".join(errors)
        )
    return list(cases)


def describe_layout(layout: str | Layout) -> str:
    """What the files of ``layout`` look like on disk, for error messages."""
    layout = get_layout(layout)
    if layout.is_4d:
        return (
            f"{layout.name}: imagesTr/<case>.nii.gz (4D) + labelsTr/<case>.nii.gz, or imagesTs/<case>.nii.gz"
        )
    files = ",".join([*layout.suffixes.values(), layout.label_suffix])
    return f"{layout.name}: <case>/<case>{layout.separator}{{{files}}}.nii.gz"


def case_id_of(path: str | Path, layout: str | Layout) -> str:
    """The case id in the name of one of ``layout``'s files (``x/BraTS2021_00000_t1.nii.gz`` ->
    ``BraTS2021_00000``, ``imagesTr/BRATS_001.nii.gz`` -> ``BRATS_001``); the bare stem otherwise."""
    layout = get_layout(layout)
    name = Path(path).name
    match = None if layout.is_4d else _file_pattern(layout).match(name)
    if match:
        return match["case"]
    nifti = _NIFTI.match(name)
    return nifti["stem"] if nifti else name


def _file_pattern(layout: Layout) -> re.Pattern[str]:
    suffixes = [*layout.suffixes.values(), layout.label_suffix]
    alternatives = "|".join(re.escape(s) for s in suffixes)
    return re.compile(
        rf"^(?P<case>.+){re.escape(layout.separator)}(?P<suffix>{alternatives})(?P<ext>\.nii(?:\.gz)?)$"
    )


def _nifti_files(folder: Path, recursive: bool = True) -> Iterator[Path]:
    """NIfTI files under ``folder``, sorted, skipping hidden files such as macOS ``._*`` forks."""
    candidates = folder.rglob("*.nii*") if recursive else folder.glob("*.nii*")
    for path in sorted(candidates):
        relative = path.relative_to(folder).parts
        if any(part.startswith(".") for part in relative) or not path.is_file():
            continue
        if _NIFTI.match(path.name):
            yield path


def _discover_per_file(root: Path, layout: Layout) -> list[Case]:
    pattern = _file_pattern(layout)
    suffix_to_role = {suffix: modality for modality, suffix in layout.suffixes.items()}
    suffix_to_role[layout.label_suffix] = "seg"
    groups: dict[tuple[Path, str], dict[str, Path]] = defaultdict(dict)
    for path in _nifti_files(root):
        match = pattern.match(path.name)
        if match:
            # setdefault: of `x.nii` and `x.nii.gz` side by side the first in sorted order wins.
            groups[(path.parent, match["case"])].setdefault(suffix_to_role[match["suffix"]], path)
    # A release without any segmentation (a validation set) is unlabelled, not missing labels.
    labelled = any("seg" in files for files in groups.values())
    cases = []
    for (folder, case_id), files in groups.items():
        ext = _NIFTI.match(next(iter(files.values())).name)["ext"]
        expected = [*MODALITIES, "seg"] if labelled else list(MODALITIES)
        missing = {
            role: folder / layout.file_name(case_id, role, ext) for role in expected if role not in files
        }
        images = {m: files[m] for m in MODALITIES if m in files}
        cases.append(
            Case(case_id, layout.name, folder, images=images, label=files.get("seg"), missing=missing)
        )
    return cases


def _discover_msd(root: Path, layout: Layout) -> list[Case]:
    cases = []
    for images_name, labels_name in _MSD_SUBSETS:
        images_dir, labels_dir = root / images_name, root / labels_name
        images = _files_by_id(images_dir)
        labels = _files_by_id(labels_dir)
        labelled = labels_dir.is_dir()
        for case_id in sorted(images.keys() | labels.keys()):
            missing = {}
            if case_id not in images:
                missing["image"] = images_dir / f"{case_id}.nii.gz"
            if labelled and case_id not in labels:
                missing["seg"] = labels_dir / f"{case_id}.nii.gz"
            cases.append(
                Case(
                    case_id,
                    layout.name,
                    images_dir,
                    image_4d=images.get(case_id),
                    label=labels.get(case_id),
                    missing=missing,
                )
            )
    return cases


def _files_by_id(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    if folder.is_dir():
        for path in _nifti_files(folder, recursive=False):
            files.setdefault(_NIFTI.match(path.name)["stem"], path)
    return files
