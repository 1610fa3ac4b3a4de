# Semantic FPN (mmseg's fpn_r50 heads) on a Context Clusters small backbone (folds 8,4,2,1).
# ImageNet weights: python tools/model_converters/coc_to_mmpretrain.py coc_small.pth.tar \
#     checkpoints/coc-small_in1k.pth
_base_ = ['./fpn.py']
checkpoint_file = 'checkpoints/coc-small_in1k.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='ContextCluster',
        arch='small',
        proposal=2,                      # p x p centres per region (4 / 25 / 49)
        out_indices=(0, 1, 2, 3),
        gap_before_final_norm=False,     # GroupNorm on each of the 4 feature maps
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file, prefix='backbone.')),
    neck=dict(in_channels=[64, 128, 320, 512]))
