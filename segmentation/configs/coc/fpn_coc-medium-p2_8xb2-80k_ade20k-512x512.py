# Context Clusters medium (4 centres per region) + Semantic FPN 80k (recipe as coc-small).
_base_ = './fpn_coc-small-p2_8xb2-80k_ade20k-512x512.py'
checkpoint_file = 'checkpoints/coc-medium_in1k.pth'
model = dict(backbone=dict(
    arch='medium',
    init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file, prefix='backbone.')))
