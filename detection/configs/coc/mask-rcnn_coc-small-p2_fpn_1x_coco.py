# Context Clusters small (4 centres per region, folds 8,4,2,1) + Mask R-CNN (FPN), 1x on COCO,
# the same recipe as EnFormer's.  Published box/mask mAP: 35.9 / 33.8.
_base_ = [
    '../_base_/models/mask-rcnn_coc-small_fpn.py',
    '../_base_/coco-instance_1x_adamw.py',
]
