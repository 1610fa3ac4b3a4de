# Context Clusters tiny on ImageNet-1K: mean_hw(GroupNorm(stage 4)) into the shared linear head.
_base_ = ['./imagenet_linear_head.py']
model = dict(backbone=dict(type='ContextCluster', arch='tiny', drop_path_rate=0.1),
             head=dict(in_channels=320))
