# Context Clusters small with 49 centres per region (p = 7) + Mask R-CNN 1x.
_base_ = './mask-rcnn_coc-small-p2_fpn_1x_coco.py'
model = dict(backbone=dict(proposal=7))
