# ADE20K (150 classes), 80k iterations, AdamW: the published Semantic FPN recipe of every
# backbone here, on mmseg's own _base_ files.
_base_ = [
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_80k.py',
]
custom_imports = dict(imports=['enformer_core'], allow_failed_imports=False)
num_classes = 150
# train: ratio 0.5-2.0 of (2048, 512), crop 512 with cat_max_ratio 0.75, flip, photometric
# distortion (as mmseg's ade20k.py).  Out-of-range label values -> 255 with a warning.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='CheckSegLabels', num_classes=num_classes),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=(512, 512), cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
# test: keep ratio with short side 512 (long side <= 2048), then resize (bilinear) so that
# both sides are multiples of 32, rounding up: the published AlignResize; whole-image
# inference; the logits are resized back to the original image for mIoU.
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='CheckSegLabels', num_classes=num_classes),
    dict(type='PackSegInputs'),
]
# 8 GPUs x 2 images = 16
train_dataloader = dict(batch_size=2, num_workers=4, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, num_workers=4, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
# AdamW lr 1e-4, wd 1e-4 (no per-parameter exceptions); poly decay power 0.9 to 0 over 80k
# iterations, no warm-up; validation + checkpoint every 8k (schedule_80k), mIoU.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4))
param_scheduler = [
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=80000, by_epoch=False)
]
auto_scale_lr = dict(enable=False, base_batch_size=16)
