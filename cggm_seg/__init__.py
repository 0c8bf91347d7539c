"""cggm_seg: balanced multimodal learning (CGGM, OGM-GE) for MONAI."""

__version__ = "0.1.0"
