"""Multimodal networks (one encoder per modality, a fusion module, a last layer ``final``) and the
light per-modality heads that CGGM and OGM-GE observe them with.

Every network here follows one contract (see :mod:`cggm_seg.networks.multi_branch`): one input
tensor in, one tensor out; per-modality encoders in ``model.encoders``; ``model.branch_names()``;
last layer ``model.final``.
"""

from cggm_seg.networks.heads import (
    DEFAULT_LEVEL,
    TASKS,
    ClassificationHead,
    RegressionHead,
    SegmentationHead,
    build_heads,
    make_heads,
)
from cggm_seg.networks.multi_branch import FUSIONS, Fusion, MultiBranchNet
from cggm_seg.networks.multi_encoder import PRESETS, ModalityEncoder, MultiEncoderSegNet, present_channels
from cggm_seg.networks.multi_view import ENCODERS, MultiViewNet, SequenceEncoder, ViewEncoder

__all__ = [
    "ENCODERS",
    "FUSIONS",
    "PRESETS",
    "DEFAULT_LEVEL",
    "TASKS",
    "ClassificationHead",
    "Fusion",
    "ModalityEncoder",
    "MultiBranchNet",
    "MultiEncoderSegNet",
    "present_channels",
    "MultiViewNet",
    "RegressionHead",
    "SegmentationHead",
    "SequenceEncoder",
    "ViewEncoder",
    "build_heads",
    "make_heads",
]
