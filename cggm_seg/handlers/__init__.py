"""cggm_seg.handlers"""
