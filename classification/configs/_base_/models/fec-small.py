# FEC small on ImageNet-1K: mean_hw(GroupNorm(stage 4)) into the shared linear head.
_base_ = ['./imagenet_linear_head.py']
model = dict(
    backbone=dict(type='FEC', arch='small', clustering='classification', drop_path_rate=0.1),
    head=dict(in_channels=320))
# cluster pooling's conv_f only feeds an argmax and gets no gradient (as published), so DDP
# must tolerate unused parameters (docs/baselines.md, FEC)
find_unused_parameters = True
