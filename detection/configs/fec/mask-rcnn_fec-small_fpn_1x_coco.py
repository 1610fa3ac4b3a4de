# FEC small + Mask R-CNN (FPN), 1x on COCO.  Data and optimiser as EnFormer's config
# (inherited); published FEC detection settings: mixer centres 7,7,7,7 with 2,2,1,1 regions per
# side, cluster pooling in 2x2 regions (clustering='detection'), lr x0.2 at epochs 8, 9, 11.
# Cluster pooling compares every point with every centre of its region (memory grows with the
# square of the pixels); pool_mode='local' (ours, 3x3 neighbouring cells) makes it linear.
# ImageNet weights: python tools/model_converters/fec_to_enformer_core.py fec_small.pth \
#     checkpoints/fec-small_in1k.pth
_base_ = '../mask-rcnn_enformer-s_fpn_1x_coco.py'
custom_imports = dict(imports=['enformer_core'], allow_failed_imports=False)
checkpoint_file = 'checkpoints/fec-small_in1k.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='FEC',
        arch='small',
        clustering='detection',
        pool_mode='global',
        out_indices=(0, 1, 2, 3),
        pooled_output=False,
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file, prefix='backbone.')),
    neck=dict(in_channels=[32, 64, 196, 320]))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 9, 11],
         gamma=0.2),
]
# conv_f of cluster pooling gets no gradient (as published)
find_unused_parameters = True
