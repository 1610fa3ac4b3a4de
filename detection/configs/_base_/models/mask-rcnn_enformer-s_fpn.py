# Mask R-CNN (mmdet's R50-FPN heads) on an EnFormer-S backbone initialised from ImageNet
# weights: a path, or the URL of the official release (converted when loaded):
#   checkpoint_file = 'https://github.com/En-Former/EnFormer/releases/download/v1.0/enformer_small.pth.tar'
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py']
checkpoint_file = 'checkpoints/enformer-s_in1k.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='EnFormer',
        arch='s',
        clustering='detection',          # 40x40 agents in stages 0-1, 12^2/10^2 centres
        out_indices=(0, 1, 2, 3),
        gap_before_final_norm=False,     # LayerNorm on each of the 4 feature maps
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file, prefix='backbone.')),
    neck=dict(in_channels=[40, 80, 160, 320], out_channels=256, num_outs=5))
