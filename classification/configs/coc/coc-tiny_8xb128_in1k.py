# Context Clusters tiny (coc_tiny), ImageNet-1K, 8 GPUs x 128 images, published recipe
# (shared/spec/BASELINES.md): AdamW lr 1e-3 (batch 1024), wd 0.05, 300 epochs + 10 cool-down,
# drop path 0.1, RandAugment/Mixup/CutMix/label smoothing 0.1/random erasing (timm recipe).
# Published top-1 (re-trained release): 73.2.  Converted release weights:
#   python tools/model_converters/coc_to_enformer_core.py coc_tiny.pth.tar coc-tiny_in1k.pth
_base_ = [
    '../_base_/datasets/imagenet_bs128.py',
    '../_base_/schedules/imagenet_bs1024_adamw_310e.py',
    '../_base_/default_runtime.py',
]
custom_imports = dict(imports=['enformer_core'], allow_failed_imports=False)
default_scope = 'mmpretrain'

model = dict(
    type='ImageClassifier',
    # the backbone returns (mean_hw(GroupNorm(stage 4)),): no neck needed
    backbone=dict(type='ContextCluster', arch='tiny', drop_path_rate=0.1),
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
# no weight decay on layer scales, alpha/beta, norms and biases (all 1-D: flat_decay_mult=0
# in the schedule); named here as well for clarity
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'layer_scale': dict(decay_mult=0.0)}))
