"""cggm_seg.evaluation"""
