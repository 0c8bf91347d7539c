"""cggm_seg.data: BraTS case discovery, datalists, label/region transforms and dataset checks; the
multi-view vector and aligned-sequence datasets of the classification and regression bundles."""

from cggm_seg.data.check import CheckReport, Problem, check_dataset
from cggm_seg.data.datalist import (
    DEFAULT_FRACTIONS,
    SPLITS,
    describe_splits,
    load_datalist,
    make_datalist,
    require_splits,
    write_datalist,
)
from cggm_seg.data.discovery import (
    Case,
    case_id_of,
    describe_layout,
    detect_layout,
    discover_cases,
    require_complete,
    skipped_paths,
)
from cggm_seg.data.layouts import LAYOUTS, MODALITIES, REGIONS, Layout, get_layout

# The transforms need torch and MONAI (seconds to import): load them on first use, so that the
# `cggm-seg check` and `datalist` commands, which import this package, start at once.
_TRANSFORMS = (
    "label_to_regions",
    "regions_to_label",
    "order_modalities",
    "ConvertToRegionsd",
    "RegionsToLabeld",
    "OrderModalitiesd",
    "load_transforms",
)
_SEQUENCES = ("check_sequences", "zero_sequences", "SelectSequencesd", "RandSequenceDropoutd")
_VIEWS = ("VIEW_DATASETS", "SKLEARN_DATASETS", "ViewData", "load_views", "load_sklearn_views")
_ALIGNED = ("load_aligned_features", "write_aligned_features", "synthetic_aligned_features")


def __getattr__(name: str) -> object:
    if name in _TRANSFORMS:
        from cggm_seg.data import transforms

        return getattr(transforms, name)
    if name in _SEQUENCES:
        from cggm_seg.data import sequences

        return getattr(sequences, name)
    if name in _VIEWS:
        from cggm_seg.data import views

        return getattr(views, name)
    if name in _ALIGNED:
        from cggm_seg.data import aligned

        return getattr(aligned, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MODALITIES",
    "REGIONS",
    "LAYOUTS",
    "Layout",
    "get_layout",
    "Case",
    "discover_cases",
    "detect_layout",
    "describe_layout",
    "case_id_of",
    "require_complete",
    "skipped_paths",
    "SPLITS",
    "DEFAULT_FRACTIONS",
    "make_datalist",
    "describe_splits",
    "require_splits",
    "write_datalist",
    "load_datalist",
    *_TRANSFORMS,
    *_SEQUENCES,
    *_VIEWS,
    *_ALIGNED,
    "Problem",
    "CheckReport",
    "check_dataset",
]
