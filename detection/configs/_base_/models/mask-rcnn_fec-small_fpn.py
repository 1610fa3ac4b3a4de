# Mask R-CNN (mmdet's R50-FPN heads) on an FEC small backbone with the published detection
# settings: mixer centres 7,7,7,7 with 2,2,1,1 regions per side, cluster pooling in 2x2 regions.
# Cluster pooling compares every point with every centre of its region (memory grows with the
# square of the pixels); pool_mode='local' (ours, 3x3 neighbouring cells) makes it linear.
# ImageNet weights: python tools/model_converters/fec_to_mmpretrain.py fec_small.pth \
#     checkpoints/fec-small_in1k.pth
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py']
checkpoint_file = 'checkpoints/fec-small_in1k.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='FEC',
        arch='small',
        clustering='detection',
        pool_mode='global',
        out_indices=(0, 1, 2, 3),
        gap_before_final_norm=False,
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file, prefix='backbone.')),
    neck=dict(in_channels=[32, 64, 196, 320], out_channels=256, num_outs=5))
# conv_f of cluster pooling gets no gradient (as published): DDP must allow unused parameters
find_unused_parameters = True
