"""The applications built on the generic core (:mod:`cggm_seg.balancing`, :mod:`cggm_seg.handlers`,
:mod:`cggm_seg.networks`, :mod:`cggm_seg.evaluation`): BraTS segmentation
(:mod:`cggm_seg.apps.brats`) and multi-view classification and regression
(:mod:`cggm_seg.apps.multiview`). The core imports no application."""
