"""The BraTS application: case discovery in the BraTS layouts, datalists and splits, label / region
and sequence transforms, dataset checks, the embedded phantom dataset, and the segmentation test
report with the missing-sequence audit."""

from cggm_seg.apps.brats.check import CheckReport, Problem, check_dataset
from cggm_seg.apps.brats.datalist import (
    DEFAULT_FRACTIONS,
    SPLITS,
    describe_splits,
    load_datalist,
    make_datalist,
    require_splits,
    write_datalist,
)
from cggm_seg.apps.brats.discovery import (
    Case,
    case_id_of,
    describe_layout,
    detect_layout,
    discover_cases,
    require_complete,
    skipped_paths,
)
from cggm_seg.apps.brats.layouts import LAYOUTS, MODALITIES, REGIONS, Layout, get_layout

# The transforms need torch and MONAI (seconds to import): load them on first use, so that the
# `cggm-seg check` and `datalist` commands, which import this package, start at once.
_TRANSFORMS = (
    "label_to_regions",
    "regions_to_label",
    "order_modalities",
    "ConvertToRegionsd",
    "RegionsToLabeld",
    "OrderModalitiesd",
    "LoadSequencesd",
    "load_transforms",
)
_SEQUENCES = ("check_sequences", "zero_sequences", "SelectSequencesd", "RandSequenceDropoutd")
_REPORT = ("SegmentationTestReport", "format_subset_table", "format_table", "missing_sequence_summary")
_METRICS = ("region_metrics", "summarise_cases")


def __getattr__(name: str) -> object:
    if name in _TRANSFORMS:
        from cggm_seg.apps.brats import transforms

        return getattr(transforms, name)
    if name in _SEQUENCES:
        from cggm_seg.apps.brats import sequences

        return getattr(sequences, name)
    if name in _REPORT:
        from cggm_seg.apps.brats import report

        return getattr(report, name)
    if name in _METRICS:
        from cggm_seg.apps.brats import region_metrics

        return getattr(region_metrics, name)
    if name == "prediction_name_formatter":
        from cggm_seg.apps.brats.prediction import prediction_name_formatter

        return prediction_name_formatter
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
    *_REPORT,
    *_METRICS,
    "prediction_name_formatter",
    "Problem",
    "CheckReport",
    "check_dataset",
]
