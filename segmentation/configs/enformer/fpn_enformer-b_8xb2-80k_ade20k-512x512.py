# EnFormer-B + Semantic FPN, 80k ADE20K.  Expected (published): mIoU 44.3.
# Backbone 15.14 M params, whole model 19.3 M.
_base_ = ['./fpn_enformer-s_8xb2-80k_ade20k-512x512.py']

checkpoint_file = 'checkpoints/enformer-b_in1k.pth'

model = dict(
    backbone=dict(
        arch='b',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file, prefix='backbone.')),
    neck=dict(in_channels=[64, 128, 320, 512]))
