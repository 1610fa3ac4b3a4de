# The classifier every ImageNet-1K config shares (mmpretrain ImageClassifier): the backbone
# returns its pooled, normalised last stage, so there is no neck; a linear head with label
# smoothing 0.1 and Mixup 0.8 / CutMix 1.0 (the published recipe). A model file adds the
# backbone and the head's in_channels.
model = dict(
    type='ImageClassifier',
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
    ),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]),
)
