# ClusterFormer-Tiny (implemented from the paper, docs/baselines.md; mmpretrain ImageClassifier).
# The paper trains with cross-entropy; Mixup/CutMix make the targets soft.
model = dict(
    type='ImageClassifier',
    backbone=dict(type='ClusterFormer', arch='tiny', drop_path_rate=0.2),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=768,
        loss=dict(type='CrossEntropyLoss', use_soft=True),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
    ),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]),
)
