# Published EnFormer ImageNet schedule: global batch 1024, AMP, AdamW lr 1e-3 (not scaled),
# wd 0.05 (none on 1-D parameters: norms, biases, alpha/beta, layer scale gamma),
# 5 linear warm-up epochs from 1e-6, cosine to 1e-6 at epoch 300, 10 cool-down epochs at 1e-6.
optim_wrapper = dict(
    type='AmpOptimWrapper',  # tools/train.py falls back to fp32 OptimWrapper without CUDA
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        flat_decay_mult=0.0,  # every 1-D parameter
        custom_keys={
            'sim_alpha': dict(decay_mult=0.0),
            'sim_beta': dict(decay_mult=0.0),
            'gamma': dict(decay_mult=0.0),
            'log_priors': dict(decay_mult=0.0),
            'log_vars': dict(decay_mult=0.0),
        }),
)

param_scheduler = [
    # 1e-3 * 1e-3 = 1e-6 -> 1e-3 over 5 epochs, updated every iteration
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=5, end=300,
         convert_to_iter_based=True),
    # epochs 300-310: cool-down at the minimum lr (schedulers leave it at 1e-6)
]

train_cfg = dict(by_epoch=True, max_epochs=310, val_interval=1)
val_cfg = dict()
test_cfg = dict()

# lr is NOT scaled with the batch size (published); set enable=True to scale from 1024.
auto_scale_lr = dict(base_batch_size=1024, enable=False)
