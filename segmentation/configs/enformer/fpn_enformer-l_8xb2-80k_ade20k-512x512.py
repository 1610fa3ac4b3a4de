# EnFormer-L + Semantic FPN, 80k ADE20K.  Expected (published): mIoU 46.6.
# Backbone 30.69 M params, whole model 34.6 M.
_base_ = ['./fpn_enformer-s_8xb2-80k_ade20k-512x512.py']

checkpoint_file = 'checkpoints/enformer-l_in1k.pth'

model = dict(
    backbone=dict(
        arch='l',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file, prefix='backbone.')),
    neck=dict(in_channels=[64, 128, 320, 512]))
