# Context Clusters small (4 centres per region, folds 8,4,2,1) + Semantic FPN, 80k on ADE20K,
# the same recipe as EnFormer's.  Published mIoU: 36.6.
_base_ = [
    '../_base_/models/fpn_coc-small.py',
    '../_base_/ade20k_80k_adamw.py',
]
