"""cggm_seg.data"""
