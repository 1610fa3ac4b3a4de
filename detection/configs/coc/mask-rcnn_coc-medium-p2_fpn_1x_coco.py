# Context Clusters medium (4 centres per region) + Mask R-CNN 1x (recipe as coc-small).
_base_ = './mask-rcnn_coc-small-p2_fpn_1x_coco.py'
checkpoint_file = 'checkpoints/coc-medium_in1k.pth'
model = dict(backbone=dict(
    arch='medium',
    init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file, prefix='backbone.')))
