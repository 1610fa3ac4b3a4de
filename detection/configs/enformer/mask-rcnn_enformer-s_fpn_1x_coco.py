# EnFormer-S + Mask R-CNN (FPN), 1x schedule on COCO 2017, published recipe
# (docs/architecture.md, "Training recipes").  Published: box mAP 41.3, mask mAP 38.1.
_base_ = [
    '../_base_/models/mask-rcnn_enformer-s_fpn.py',
    '../_base_/coco-instance_1x_adamw.py',
]
