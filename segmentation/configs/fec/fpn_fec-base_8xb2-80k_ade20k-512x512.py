# FEC base + Semantic FPN 80k (recipe as fec-small).
_base_ = './fpn_fec-small_8xb2-80k_ade20k-512x512.py'
checkpoint_file = 'checkpoints/fec-base_in1k.pth'
model = dict(
    backbone=dict(
        arch='base',
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file, prefix='backbone.')),
    neck=dict(in_channels=[64, 128, 320, 512]))
