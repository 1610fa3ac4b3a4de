# FEC small + Semantic FPN, 80k on ADE20K.  Data, schedule and optimiser as EnFormer's config
# (inherited); published FEC segmentation settings: centres 10,10,5,5 per side, global
# clustering and global cluster pooling (clustering='segmentation').
# ImageNet weights: python tools/model_converters/fec_to_enformer_core.py fec_small.pth \
#     checkpoints/fec-small_in1k.pth
_base_ = '../fpn_enformer-s_8xb2-80k_ade20k-512x512.py'
custom_imports = dict(imports=['enformer_core'], allow_failed_imports=False)
checkpoint_file = 'checkpoints/fec-small_in1k.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='FEC',
        arch='small',
        clustering='segmentation',
        pool_mode='global',              # 'local': linear-cost pooling for large inputs
        out_indices=(0, 1, 2, 3),
        pooled_output=False,
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file, prefix='backbone.')),
    neck=dict(in_channels=[32, 64, 196, 320]))
# conv_f of cluster pooling gets no gradient (as published)
find_unused_parameters = True
