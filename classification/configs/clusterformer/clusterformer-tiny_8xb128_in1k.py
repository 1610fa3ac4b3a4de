# ClusterFormer-Tiny (implemented from the paper, docs/baselines.md), ImageNet-1K, 8 GPUs x 128.
# Paper recipe: AdamW lr 1e-3, cosine, 300 epochs, batch 1024, cross-entropy (paper top-1 81.31).
# Open choices (documented in docs/baselines.md): 5 warm-up epochs, wd 0.05, drop path 0.2
# (Swin-T's), the timm augmentation of the data base, soft-target cross-entropy for Mixup/CutMix.
_base_ = '../coc/coc-tiny_8xb128_in1k.py'
model = dict(
    backbone=dict(_delete_=True, type='ClusterFormer', arch='tiny', drop_path_rate=0.2),
    head=dict(in_channels=768,
              loss=dict(_delete_=True, type='CrossEntropyLoss', use_soft=True)))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=5, end=300,
         convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
