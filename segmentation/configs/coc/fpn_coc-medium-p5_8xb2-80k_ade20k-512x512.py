# Context Clusters medium with 25 centres per region (p = 5) + Semantic FPN 80k.
_base_ = './fpn_coc-medium-p2_8xb2-80k_ade20k-512x512.py'
model = dict(backbone=dict(proposal=5))
