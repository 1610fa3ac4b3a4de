# FEC base + Mask R-CNN 1x (recipe as fec-small).
_base_ = './mask-rcnn_fec-small_fpn_1x_coco.py'
checkpoint_file = 'checkpoints/fec-base_in1k.pth'
model = dict(
    backbone=dict(
        arch='base',
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file, prefix='backbone.')),
    neck=dict(in_channels=[64, 128, 320, 512]))
