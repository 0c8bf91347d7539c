"""cggm_seg.networks"""
