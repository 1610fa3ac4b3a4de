# Context Clusters small with 25 centres per region (p = 5) + Mask R-CNN 1x.
_base_ = './mask-rcnn_coc-small-p2_fpn_1x_coco.py'
model = dict(backbone=dict(proposal=5))
