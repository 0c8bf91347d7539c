"""cggm_seg.balancing"""
