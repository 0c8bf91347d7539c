"""The BraTS dataset layouts cggm_seg understands, and the one modality order used inside it.

Three layouts are common in the wild:

======================  ==============================================  ===========================
layout                  files per case                                  label values
======================  ==============================================  ===========================
``brats2021``           ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``  0, 1 NCR, 2 ED, 4 ET
``brats2023``           ``<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz``   0, 1 NETC, 2 SNFH, 3 ET
``msd``                 ``imagesTr/BRATS_###.nii.gz`` (4D, channels     0, 1 edema, 2 non-enh.,
                        last: FLAIR, T1w, T1gd, T2w), ``labelsTr/``      3 enhancing
======================  ==============================================  ===========================

Inside the toolkit the sequences are always in :data:`MODALITIES` order and the label is always
the three region channels :data:`REGIONS` (TC, WT, ET). The region definitions per layout are in
:attr:`Layout.region_labels`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MODALITIES", "REGIONS", "Layout", "LAYOUTS", "get_layout"]

#: Canonical modality order of every image tensor inside cggm_seg (channel 0..3).
MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

#: Canonical region channel order of every label / prediction tensor inside cggm_seg.
REGIONS: tuple[str, ...] = ("tc", "wt", "et")


@dataclass(frozen=True)
class Layout:
    """Naming and label conventions of one BraTS dataset layout.

    Attributes:
        name: the layout's identifier (``brats2021``, ``brats2023``, ``msd``).
        suffixes: canonical modality -> file-name suffix used by the layout (per-file layouts).
        label_suffix: file-name suffix of the segmentation (per-file layouts).
        separator: character between case id and suffix (``_`` or ``-``).
        label_values: the label values the layout allows (background included).
        region_labels: region name -> the label values whose union forms that region.
        msd_channels: for the 4D MSD layout, the canonical modality stored in each channel of
            the file (in file order); empty for per-file layouts.
    """

    name: str
    suffixes: dict[str, str]
    label_suffix: str
    separator: str
    label_values: frozenset[int]
    region_labels: dict[str, tuple[int, ...]]
    msd_channels: tuple[str, ...] = ()

    @property
    def is_4d(self) -> bool:
        """True where all sequences of a case are stored in one 4D file (MSD)."""
        return bool(self.msd_channels)

    def channel_index(self) -> tuple[int, ...]:
        """For a 4D layout, the file channel that holds each canonical modality, in MODALITIES order."""
        if not self.is_4d:
            raise ValueError(f"layout {self.name!r} stores one file per sequence, not a 4D image")
        return tuple(self.msd_channels.index(m) for m in MODALITIES)

    def file_name(self, case_id: str, modality: str, ext: str = ".nii.gz") -> str:
        """File name of one sequence (or ``"seg"``) of ``case_id`` in a per-file layout."""
        if self.is_4d:
            raise ValueError(f"layout {self.name!r} has no per-sequence files")
        suffix = self.label_suffix if modality == "seg" else self.suffixes[modality]
        return f"{case_id}{self.separator}{suffix}{ext}"


LAYOUTS: dict[str, Layout] = {
    "brats2021": Layout(
        name="brats2021",
        suffixes={"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"},
        label_suffix="seg",
        separator="_",
        label_values=frozenset({0, 1, 2, 4}),
        region_labels={"tc": (1, 4), "wt": (1, 2, 4), "et": (4,)},
    ),
    "brats2023": Layout(
        name="brats2023",
        suffixes={"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"},
        label_suffix="seg",
        separator="-",
        label_values=frozenset({0, 1, 2, 3}),
        region_labels={"tc": (1, 3), "wt": (1, 2, 3), "et": (3,)},
    ),
    "msd": Layout(
        name="msd",
        suffixes={},
        label_suffix="",
        separator="",
        label_values=frozenset({0, 1, 2, 3}),
        # MSD Task01: 1 = oedema, 2 = non-enhancing tumour, 3 = enhancing tumour.
        region_labels={"tc": (2, 3), "wt": (1, 2, 3), "et": (3,)},
        msd_channels=("flair", "t1", "t1ce", "t2"),
    ),
}


def get_layout(name: str | Layout) -> Layout:
    """Return the :class:`Layout` called ``name`` (a Layout passes through).

    Raises:
        ValueError: ``name`` is not one of :data:`LAYOUTS`.
    """
    if isinstance(name, Layout):
        return name
    try:
        return LAYOUTS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown BraTS layout {name!r}; expected one of {sorted(LAYOUTS)}") from None
