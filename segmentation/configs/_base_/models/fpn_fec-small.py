# Semantic FPN (mmseg's fpn_r50 heads) on an FEC small backbone with the published segmentation
# settings: centres 10,10,5,5 per side, global clustering and global cluster pooling.
# ImageNet weights: python tools/model_converters/fec_to_mmpretrain.py fec_small.pth \
#     checkpoints/fec-small_in1k.pth
_base_ = ['./fpn.py']
checkpoint_file = 'checkpoints/fec-small_in1k.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='FEC',
        arch='small',
        clustering='segmentation',
        pool_mode='global',              # 'local': linear-cost pooling for large inputs
        out_indices=(0, 1, 2, 3),
        gap_before_final_norm=False,
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file, prefix='backbone.')),
    neck=dict(in_channels=[32, 64, 196, 320]))
# conv_f of cluster pooling gets no gradient (as published): DDP must allow unused parameters
find_unused_parameters = True
