# EnFormer-S on ImageNet-1K: LayerNorm(GAP(stage 4)) into the shared linear head.
# drop path: 0.1 for S is the published value; 0.2 (B) / 0.3 (L) are our choice (the
# published code gives no B/L value), following the usual depth/width scaling.
_base_ = ['./imagenet_linear_head.py']
model = dict(backbone=dict(type='EnFormer', arch='s', drop_path_rate=0.1),
             head=dict(in_channels=320))
