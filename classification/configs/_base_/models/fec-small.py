# FEC small (mmpretrain ImageClassifier).  The backbone returns (mean_hw(GroupNorm(stage 4)),).
model = dict(
    type='ImageClassifier',
    backbone=dict(type='FEC', arch='small', clustering='classification', drop_path_rate=0.1),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=320,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
    ),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]),
)
# cluster pooling's conv_f only feeds an argmax and gets no gradient (as published), so DDP
# must tolerate unused parameters (docs/baselines.md, FEC)
find_unused_parameters = True
