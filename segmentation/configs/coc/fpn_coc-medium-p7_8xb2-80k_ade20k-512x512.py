# Context Clusters medium with 49 centres per region (p = 7) + Semantic FPN 80k.
# Published mIoU (medium-49): 40.8.
_base_ = './fpn_coc-medium-p2_8xb2-80k_ade20k-512x512.py'
model = dict(backbone=dict(proposal=7))
