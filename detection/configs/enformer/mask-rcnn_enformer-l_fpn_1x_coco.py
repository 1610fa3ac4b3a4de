# EnFormer-L + Mask R-CNN (FPN), 1x COCO.  Published: box mAP 44.0, mask mAP 40.0.
_base_ = ['./mask-rcnn_enformer-s_fpn_1x_coco.py']
checkpoint_file = 'checkpoints/enformer-l_in1k.pth'
model = dict(
    backbone=dict(
        arch='l',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file, prefix='backbone.')),
    neck=dict(in_channels=[64, 128, 320, 512]))
