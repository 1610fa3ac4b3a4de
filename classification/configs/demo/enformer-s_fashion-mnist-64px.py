# The embedded CPU demo (`make demo`): the full EnFormer-S, trained from scratch on
# Fashion-MNIST (Debian package dataset-fashion-mnist) at 64x64, grey replicated to RGB.
# Sized for a 2-core CPU by wall-clock time, not by a fixed number of images: 2 CPU processes
# (gloo, `tools/dist_train.sh CONFIG 2`: small kernels scale better over processes than
# threads) train for `train_minutes`; TimeBudgetHook times the first iterations and ends the
# run (and its cosine decay) on the last iteration that fits, so the whole demo (training,
# evaluation on the 10k test images, picture) stays under 20 minutes on slower and faster
# machines alike. Figures: classification/README.md.
# Departures from the ImageNet recipe, all for a run of 1.5-2 epochs: layer-scale init 0.1
# (1e-6 is for 310 epochs; the branches would barely open), no label smoothing, mixup, erasing or
# flips (nothing to regularise yet), the partitional clustering's hard assignment taken by argmax
# in training too (gumbel=False: no sampling noise, and training sees what evaluation sees),
# and clamp_agents (an 8x8 stage-1 map clusters its 64 pixels instead of pooling them up to
# 14x14 agents; same parameters, faster at 64 px, identical at 224 px).
custom_imports = dict(imports=['enformer_core'], allow_failed_imports=False)
default_scope = 'mmpretrain'

data_root = '/usr/share/datasets/fashion-mnist'
img_size = 64
train_minutes = 17.5  # wall-clock budget of the training loop (TimeBudgetHook)
max_train_images = 192000  # upper bound: the run ends there even on a fast machine
batch_size = 32  # per process
num_procs = 2  # processes of tools/run_demo.sh; the schedule below is per process
max_iters = max_train_images // (batch_size * num_procs)
warmup_iters = 100  # fixed, and longer than TimeBudgetHook's calibration (10 + 80 iterations)
lr = 3e-3  # global batch 64

model = dict(
    type='ImageClassifier',
    backbone=dict(type='EnFormer', arch='s', drop_path_rate=0.0,
                  layer_scale_init_value=0.1, clamp_agents=True, gumbel=False),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=320,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
    ),
)

data_preprocessor = dict(
    num_classes=10,
    mean=[72.94, 72.94, 72.94],  # Fashion-MNIST pixel mean / std (0.286, 0.353) x 255
    std=[90.02, 90.02, 90.02],
    to_rgb=False,
)
train_pipeline = [
    dict(type='Resize', scale=(img_size, img_size), interpolation='bilinear'),
    dict(type='GreyToRGB'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='Resize', scale=(img_size, img_size), interpolation='bilinear'),
    dict(type='GreyToRGB'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=0,  # 2 cores: loading in the main process is cheapest
    persistent_workers=False,  # (mmpretrain's tools/train.py, used by mim, defaults to True)
    # the 60k training images, reshuffled every pass, for as many iterations as fit
    dataset=dict(type='FashionMNISTIdx', data_root=data_root, split='train',
                 pipeline=train_pipeline),
    sampler=dict(type='InfiniteSampler', shuffle=True),
)
# evaluation on the 10 000 test images (split='test' reads the t10k files)
test_dataloader = dict(
    batch_size=250,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(type='FashionMNISTIdx', data_root=data_root, split='test',
                 pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
test_evaluator = dict(type='Accuracy', topk=(1, 5))
test_cfg = dict()
# no validation during training: tools/run_demo.sh evaluates afterwards
val_dataloader = None
val_evaluator = None
val_cfg = None

optim_wrapper = dict(
    type='OptimWrapper',
    # fused=True: PyTorch's one-kernel AdamW (same update; ~4x cheaper step on CPU)
    optimizer=dict(type='AdamW', lr=lr, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999),
                   fused=True),
    paramwise_cfg=dict(
        norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0,
        custom_keys={k: dict(decay_mult=0.0)
                     for k in ('sim_alpha', 'sim_beta', 'gamma', 'log_priors', 'log_vars')}),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=warmup_iters),
    # `end` is moved to the run's last iteration by TimeBudgetHook
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=False, begin=warmup_iters,
         end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
# iteration-based: log `Iter(train) [300/3000]`, not `Epoch(train) [1][300/...]`
log_processor = dict(by_epoch=False)

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=100, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # every 300 iterations (a crash loses at most ~4 min; --resume continues) and the last one
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=300, max_keep_ckpts=1,
                    save_last=True),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='VisualizationHook', enable=False),
)
# decide at iteration 90 (inside the warm-up), then renew the estimate every 100 iterations
# until 95 % of the run: a shared machine's speed drifts by 20 % within a run
custom_hooks = [dict(type='TimeBudgetHook', minutes=train_minutes, skip_iters=10,
                     calibrate_iters=80, min_iters=warmup_iters + 1, refine_interval=100,
                     refine_until=0.95),
                dict(type='ProgressBarHook', interval=25)]

env_cfg = dict(cudnn_benchmark=False,
               mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='gloo'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='UniversalVisualizer', vis_backends=vis_backends)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
