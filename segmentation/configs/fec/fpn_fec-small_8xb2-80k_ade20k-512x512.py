# FEC small + Semantic FPN, 80k on ADE20K, the same recipe as EnFormer's.
_base_ = [
    '../_base_/models/fpn_fec-small.py',
    '../_base_/ade20k_80k_adamw.py',
]
