# FEC small + Mask R-CNN (FPN), 1x on COCO; the published FEC schedule multiplies the lr by 0.2
# at epochs 8, 9 and 11 (instead of 0.1 at 8 and 11).
_base_ = [
    '../_base_/models/mask-rcnn_fec-small_fpn.py',
    '../_base_/coco-instance_1x_adamw.py',
]
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 9, 11],
         gamma=0.2),
]
