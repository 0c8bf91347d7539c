"""Find the cases of a BraTS dataset on disk, whatever its layout.

Discovery is tolerant: :func:`discover_cases` returns every case it can see, with the files it
expected but did not find recorded in :attr:`Case.missing` and the sequences found in two files
in :attr:`Case.duplicates`, so that ``cggm-seg check`` can report all problems at once. Code that
needs a usable dataset calls :func:`require_complete`, which raises on the first look at an
incomplete, ambiguous or duplicated case.

Per-file layouts (``brats2021``, ``brats2023``) are searched recursively under the root: a case
is the set of files ``<case><sep><suffix>.nii(.gz)`` in one folder, so the root may be the
folder of case folders or any parent of it. The ``msd`` layout is read from ``imagesTr``,
``labelsTr`` and ``imagesTs`` (``labelsTs`` too, if present) directly under the root.

Suffixes and extensions are matched in any case (``BraTS2021_00000_T1.NII.GZ`` is the case's t1);
the case id keeps the case of the file name. Hidden files and folders (``.*``, such as macOS
``._*`` forks) are ignored. Anything else that looks like data but belongs to no case, a file
whose name holds ``.nii`` or a folder beside the case folders, is listed by
:func:`skipped_paths` with the reason, so that it is never dropped without a word.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cggm_seg.apps.brats.layouts import LAYOUTS, MODALITIES, Layout, get_layout

__all__ = [
    "Case",
    "discover_cases",
    "detect_layout",
    "require_complete",
    "skipped_paths",
    "describe_layout",
    "case_id_of",
]

#: MSD sub-folders holding images, and the label folder beside each.
_MSD_SUBSETS: tuple[tuple[str, str], ...] = (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs"))

_NIFTI = re.compile(r"^(?P<stem>.+?)(?P<ext>\.nii(?:\.gz)?)$", re.IGNORECASE)

#: A name that looks like a NIfTI file, whether or not it ends like one (``x.nii.gz.bak``).
_NIFTI_LIKE = re.compile(r"\.nii", re.IGNORECASE)


@dataclass(frozen=True)
class Case:
    """One case (subject) of a BraTS dataset as found on disk.

    Attributes:
        case_id: the case identifier (``BraTS2021_00000``, ``BraTS-GLI-00000-000``, ``BRATS_001``).
        layout: name of the layout the case follows (a key of :data:`~cggm_seg.apps.brats.layouts.LAYOUTS`).
        folder: the folder holding the case's images (its case folder, or MSD ``imagesTr``/``imagesTs``).
        images: per-file layouts: canonical modality -> file, in
            :data:`~cggm_seg.apps.brats.layouts.MODALITIES` order, for the sequences found; empty for ``msd``.
        image_4d: ``msd``: the 4D image (channels last, in the layout's ``msd_channels`` order);
            ``None`` for per-file layouts or when the file is missing.
        label: the segmentation file, or ``None`` when the case has none.
        missing: files the layout expects but that are not on disk: a modality name, ``"image"``
            (the MSD 4D image) or ``"seg"`` -> the path where the file was expected. A case of an
            unlabelled release (no case has a label, or MSD ``imagesTs``) does not miss its label.
        duplicates: a role (modality, ``"image"`` or ``"seg"``) found in more than one file
            (``x_t1.nii`` beside ``x_t1.nii.gz``) -> all of them, sorted. The role's entry in
            ``images``, ``image_4d`` or ``label`` is the first of them, but the case is unusable
            (:attr:`image` and :func:`require_complete` raise) until all but one are removed.
    """

    case_id: str
    layout: str
    folder: Path
    images: dict[str, Path] = field(default_factory=dict)
    image_4d: Path | None = None
    label: Path | None = None
    missing: dict[str, Path] = field(default_factory=dict)
    duplicates: dict[str, tuple[Path, ...]] = field(default_factory=dict)

    @property
    def is_complete(self) -> bool:
        """True when no expected file is missing."""
        return not self.missing

    @property
    def missing_sequences(self) -> list[str]:
        """The sequences (in canonical order) whose files the case lacks (per-file layouts)."""
        return [m for m in MODALITIES if m in self.missing]

    @property
    def misses_every_sequence(self) -> bool:
        """True when the case has no image file at all."""
        return "image" in self.missing or len(self.missing_sequences) == len(MODALITIES)

    def without_missing_sequences(self) -> Case:
        """This case with its missing sequence files no longer counted as missing (the label and a
        4D image still are): what evaluation and inference take when they may zero-fill."""
        import dataclasses

        kept = {role: path for role, path in self.missing.items() if role not in MODALITIES}
        return dataclasses.replace(self, missing=kept)

    def image_allowing_missing(self) -> list[Path | None] | Path:
        """:attr:`image` with ``None`` in place of each missing sequence's file.

        Raises:
            ValueError: the case has no image file at all, or two files for one image.
        """
        if self.misses_every_sequence:
            raise ValueError(f"case {self.case_id!r} in {self.folder} has no sequence file; nothing to use.")
        if self.image_4d is not None or not self.missing_sequences:
            return self.without_missing_sequences().image
        ambiguous = [role for role in self.duplicates if role != "seg"]
        if ambiguous:
            raise ValueError(
                f"case {self.case_id!r} in {self.folder}: "
                + "; ".join(map(self.describe_duplicate, ambiguous))
            )
        return [None if m in self.missing else self.images[m] for m in MODALITIES]

    @property
    def image(self) -> list[Path] | Path:
        """The image as a datalist gives it to ``LoadImaged``: 4 files in canonical order, or the 4D file.

        Raises:
            ValueError: the case misses an image file, or has two files for one image.
        """
        missing_images = sorted(set(self.missing) - {"seg"})
        if missing_images:
            raise ValueError(
                f"case {self.case_id!r} in {self.folder} misses {', '.join(missing_images)}: "
                f"expected {', '.join(str(self.missing[m]) for m in missing_images)}"
            )
        ambiguous = [role for role in self.duplicates if role != "seg"]
        if ambiguous:
            raise ValueError(
                f"case {self.case_id!r} in {self.folder}: "
                + "; ".join(map(self.describe_duplicate, ambiguous))
            )
        if self.image_4d is not None:
            return self.image_4d
        return [self.images[m] for m in MODALITIES]

    def describe_duplicate(self, role: str) -> str:
        """What is wrong with the files of ``role`` in :attr:`duplicates`, naming them all."""
        name = {"seg": "the label", "image": "the 4D image"}.get(role, f"the {role} sequence")
        found = self.duplicates[role]
        return f"{len(found)} files for {name} ({', '.join(str(p) for p in found)}); expected one"

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
        layout: a layout name or :class:`~cggm_seg.apps.brats.layouts.Layout`; ``None`` (default)
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
    """Return ``cases`` as a list if every case is complete and unambiguous and every case id unique.

    Raises:
        ValueError: listing every incomplete case with the files it misses, every role found in
            two files with both files, and every case id found more than once with its folders.
    """
    errors = [
        f"case {c.case_id!r} in {c.folder} misses "
        + ", ".join(f"{name} (expected {path})" for name, path in c.missing.items())
        for c in cases
        if c.missing
    ]
    errors += [
        f"case {c.case_id!r} in {c.folder}: {c.describe_duplicate(role)}"
        for c in cases
        for role in c.duplicates
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


def skipped_paths(root: str | Path, layout: str | Layout | None = None) -> list[tuple[Path, str]]:
    """Files and folders under ``root`` that look like data but belong to no case, with the reason.

    Listed are: files whose name holds ``.nii`` (any case) but that do not end in ``.nii`` or
    ``.nii.gz``, or that match none of ``layout``'s file names (per-file layouts), or that lie
    outside ``imagesTr``, ``labelsTr``, ``imagesTs`` and ``labelsTs`` (``msd``); and, for per-file
    layouts, folders beside the case folders that hold neither a case nor such a file (an empty
    or unconverted case folder). Hidden files and folders are not listed.

    Args:
        root: the dataset folder, as given to :func:`discover_cases`.
        layout: a layout name or :class:`~cggm_seg.apps.brats.layouts.Layout`; ``None`` (default)
            detects it with :func:`detect_layout`.

    Returns:
        ``(path, reason)`` pairs sorted by path; empty when every such file belongs to a case.

    Raises:
        ValueError: ``root`` is not a folder, or ``layout`` is ``None`` and cannot be detected.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"dataset folder {root} does not exist or is not a folder")
    layout = detect_layout(root) if layout is None else get_layout(layout)
    msd_folders = {root / name for subset in _MSD_SUBSETS for name in subset}
    pattern = None if layout.is_4d else _file_pattern(layout)
    skipped = []
    for path in _data_files(root):
        if not _NIFTI.match(path.name):
            skipped.append((path, "not a .nii or .nii.gz file"))
        elif layout.is_4d and path.parent not in msd_folders:
            where = ", ".join(sorted(folder.name for folder in msd_folders))
            skipped.append((path, f"outside {where}; expected {describe_layout(layout)}"))
        elif pattern is not None and not pattern.match(path.name):
            skipped.append((path, f"matches no case file name; expected {describe_layout(layout)}"))
    if not layout.is_4d:
        case_folders = {case.folder for case in discover_cases(root, layout)}
        # Not listed again: folders holding a case or a file listed above.
        holding = {parent for path in [*case_folders, *(p for p, _ in skipped)] for parent in path.parents}
        beside = {folder.parent for folder in case_folders if root in folder.parents} - case_folders
        skipped += [
            (folder, f"a folder beside the case folders with no {layout.name} case in it")
            for parent in beside
            for folder in parent.iterdir()
            if folder.is_dir() and not folder.name.startswith(".") and folder not in case_folders | holding
        ]
    return sorted(skipped)


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
        rf"^(?P<case>.+){re.escape(layout.separator)}(?P<suffix>{alternatives})(?P<ext>\.nii(?:\.gz)?)$",
        re.IGNORECASE,
    )


def _data_files(folder: Path, recursive: bool = True) -> Iterator[Path]:
    """Files under ``folder`` whose name holds ``.nii`` (any case), sorted, skipping hidden files
    and folders such as macOS ``._*`` forks."""
    candidates = folder.rglob("*") if recursive else folder.glob("*")
    for path in sorted(candidates):
        relative = path.relative_to(folder).parts
        if any(part.startswith(".") for part in relative) or not _NIFTI_LIKE.search(path.name):
            continue
        if path.is_file():
            yield path


def _nifti_files(folder: Path, recursive: bool = True) -> Iterator[Path]:
    """The ``.nii`` and ``.nii.gz`` files (any case) of :func:`_data_files`."""
    return (path for path in _data_files(folder, recursive) if _NIFTI.match(path.name))


def _discover_per_file(root: Path, layout: Layout) -> list[Case]:
    pattern = _file_pattern(layout)
    suffix_to_role = {suffix.lower(): modality for modality, suffix in layout.suffixes.items()}
    suffix_to_role[layout.label_suffix.lower()] = "seg"
    groups: dict[tuple[Path, str], dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for path in _nifti_files(root):
        match = pattern.match(path.name)
        if match:
            groups[(path.parent, match["case"])][suffix_to_role[match["suffix"].lower()]].append(path)
    # A release without any segmentation (a validation set) is unlabelled, not missing labels.
    labelled = any("seg" in found for found in groups.values())
    cases = []
    for (folder, case_id), found in groups.items():
        files = {role: paths[0] for role, paths in found.items()}
        ext = _NIFTI.match(next(iter(files.values())).name)["ext"]
        expected = [*MODALITIES, "seg"] if labelled else list(MODALITIES)
        missing = {
            role: folder / layout.file_name(case_id, role, ext) for role in expected if role not in files
        }
        images = {m: files[m] for m in MODALITIES if m in files}
        duplicates = {role: tuple(paths) for role, paths in found.items() if len(paths) > 1}
        cases.append(
            Case(
                case_id,
                layout.name,
                folder,
                images=images,
                label=files.get("seg"),
                missing=missing,
                duplicates=duplicates,
            )
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
            found = {"image": images.get(case_id, []), "seg": labels.get(case_id, [])}
            cases.append(
                Case(
                    case_id,
                    layout.name,
                    images_dir,
                    image_4d=found["image"][0] if found["image"] else None,
                    label=found["seg"][0] if found["seg"] else None,
                    missing=missing,
                    duplicates={role: tuple(paths) for role, paths in found.items() if len(paths) > 1},
                )
            )
    return cases


def _files_by_id(folder: Path) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = defaultdict(list)
    if folder.is_dir():
        for path in _nifti_files(folder, recursive=False):
            files[_NIFTI.match(path.name)["stem"]].append(path)
    return files
