# ClusterFormer-Tiny (implemented from the paper, docs/baselines.md) on ImageNet-1K. The paper
# trains with cross-entropy; Mixup/CutMix make the targets soft.
_base_ = ['./imagenet_linear_head.py']
model = dict(
    backbone=dict(type='ClusterFormer', arch='tiny', drop_path_rate=0.2),
    head=dict(in_channels=768, loss=dict(_delete_=True, type='CrossEntropyLoss', use_soft=True)))
