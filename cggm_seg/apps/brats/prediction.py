"""Naming the predicted label maps of BraTS cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cggm_seg.apps.brats.discovery import case_id_of

__all__ = ["prediction_name_formatter"]


def prediction_name_formatter(metadict: dict, saver: Any) -> dict[str, Any]:
    """``SaveImage`` name formatter: ``<case_id>`` from the first input file of a BraTS case.

    ``BraTS2021_00000_t1.nii.gz`` -> ``BraTS2021_00000``; ``BraTS-GLI-00000-000-t1n.nii.gz`` ->
    ``BraTS-GLI-00000-000``; MSD ``BRATS_001.nii.gz`` -> ``BRATS_001``.
    """
    source = metadict.get("filename_or_obj", "")
    path = Path(str(source[0] if isinstance(source, (list, tuple)) else source))
    stem = case_id_of(path, "msd")  # the bare file stem
    for layout in ("brats2021", "brats2023"):
        case_id = case_id_of(path, layout)
        if case_id != stem:
            return {"subject": case_id, "idx": None}
    return {"subject": stem, "idx": None}
