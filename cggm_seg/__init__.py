"""cggm_seg: balanced multimodal learning (CGGM, OGM-GE) for MONAI."""

from cggm_seg.errors import install_excepthook

__version__ = "0.1.0"

install_excepthook()  # a failed bundle run ends with its cause, not "Failed to evaluate ConfigExpression"
