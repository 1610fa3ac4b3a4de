# Semantic FPN (mmseg's fpn_r50: FPN 256 channels, 4 outputs; FPNHead 128 channels, dropout
# 0.1) on an EnFormer-S backbone initialised from ImageNet weights: a path, or the URL of the
# official release (converted when loaded).
_base_ = ['./fpn.py']
checkpoint_file = 'checkpoints/enformer-s_in1k.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='EnFormer',
        arch='s',
        clustering='segmentation',       # 32x32 agents in stages 0-1, 12^2/12^2 centres
        out_indices=(0, 1, 2, 3),
        gap_before_final_norm=False,     # LayerNorm on each of the 4 feature maps
        drop_path_rate=0.1,              # not stated for ADE20K in the paper; as detection
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file, prefix='backbone.')),
    neck=dict(in_channels=[40, 80, 160, 320]))
