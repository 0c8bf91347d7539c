"""The multi-view application: vector datasets that ship offline split into views, the aligned
sequence datasets (CMU-MOSI, IEMOCAP), their metrics, the epoch metric handler and the test report
with the missing-view audit."""

from cggm_seg.apps.multiview.aligned import (
    ALIGNED_MODALITIES,
    ALIGNED_SPLITS,
    load_aligned_features,
    synthetic_aligned_features,
    write_aligned_features,
)
from cggm_seg.apps.multiview.vector_metric_handler import VectorMetric, vector_key_metric
from cggm_seg.apps.multiview.vector_metrics import (
    MAIN_METRIC,
    METRIC_FAMILIES,
    classification_metrics,
    mosi_metrics,
    regression_metrics,
    task_metrics,
)
from cggm_seg.apps.multiview.vector_report import VectorTestReport, zero_views
from cggm_seg.apps.multiview.view_data import SPLITS, ViewData, standardise
from cggm_seg.apps.multiview.views import SKLEARN_DATASETS, VIEW_DATASETS, load_sklearn_views, load_views

__all__ = [
    "ALIGNED_MODALITIES",
    "ALIGNED_SPLITS",
    "load_aligned_features",
    "synthetic_aligned_features",
    "write_aligned_features",
    "VectorMetric",
    "vector_key_metric",
    "MAIN_METRIC",
    "METRIC_FAMILIES",
    "classification_metrics",
    "mosi_metrics",
    "regression_metrics",
    "task_metrics",
    "VectorTestReport",
    "zero_views",
    "SPLITS",
    "ViewData",
    "standardise",
    "SKLEARN_DATASETS",
    "VIEW_DATASETS",
    "load_sklearn_views",
    "load_views",
]
