# EnFormer-B + Mask R-CNN (FPN), 1x COCO.  Published: box mAP 42.8, mask mAP 39.3.
_base_ = ['./mask-rcnn_enformer-s_fpn_1x_coco.py']
checkpoint_file = 'checkpoints/enformer-b_in1k.pth'
model = dict(
    backbone=dict(
        arch='b',
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file, prefix='backbone.')),
    neck=dict(in_channels=[64, 128, 320, 512]))
