# EnFormer-B on ImageNet-1K (drop path 0.2: our choice, see enformer-s.py).
_base_ = ['./imagenet_linear_head.py']
model = dict(backbone=dict(type='EnFormer', arch='b', drop_path_rate=0.2),
             head=dict(in_channels=512))
