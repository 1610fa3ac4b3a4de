# Context Clusters small (4 centres per region, folds 8,4,2,1) + Semantic FPN, 80k on ADE20K.
# Same data, schedule and optimiser as EnFormer's config (inherited); only the backbone and
# the FPN input widths change.  Published mIoU: 36.6.
# ImageNet weights: python tools/model_converters/coc_to_enformer_core.py coc_small.pth.tar \
#     checkpoints/coc-small_in1k.pth
_base_ = '../fpn_enformer-s_8xb2-80k_ade20k-512x512.py'
custom_imports = dict(imports=['enformer_core'], allow_failed_imports=False)
checkpoint_file = 'checkpoints/coc-small_in1k.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='ContextCluster',
        arch='small',
        proposal=2,                      # p x p centres per region (4 / 25 / 49)
        out_indices=(0, 1, 2, 3),
        pooled_output=False,             # GroupNorm on each of the 4 feature maps
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file, prefix='backbone.')),
    neck=dict(in_channels=[64, 128, 320, 512]))
