# EnFormer-L on ImageNet-1K (mmpretrain ImageClassifier).
# The backbone returns (LayerNorm(GAP(stage 4)),), so no neck is needed.
# drop path: 0.1 for S is the published value; 0.2 (B) / 0.3 (L) are our choice (the
# published code gives no B/L value), following the usual depth/width scaling.
model = dict(
    type='ImageClassifier',
    backbone=dict(type='EnFormer', arch='l', drop_path_rate=0.3),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=512,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
    ),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0),
    ]),
)
