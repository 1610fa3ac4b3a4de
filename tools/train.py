#!/usr/bin/env python
"""Train any config of the project (classification, detection or segmentation) with MMEngine.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
                          [--cfg-options k=v ...] [--launcher none|pytorch|slurm]

The toolbox (mmpretrain / mmdet / mmseg) is taken from the config's ``default_scope``.
Multi-process runs go through ``tools/dist_train.sh`` (torchrun) or ``tools/slurm_train.sh``;
without CUDA they run on CPU with the gloo backend.  ``load_from`` (a path or URL, our layout
or a published one) must fit the model unless the config sets ``load_from_strict = False``.
Every run checks its losses (``NonFiniteLossHook``): a NaN/Inf loss stops training before the
optimizer step, naming the iteration and the samples; ``non_finite_loss = 'skip'`` in the
config skips such batches instead (docs/reliability.md).
"""
from __future__ import annotations

import argparse

from mmengine.runner import find_latest_checkpoint

from enformer_core.utils.dist import prepare_distributed
from enformer_core.utils.launch import (LaunchError, adapt_to_machine,
                                        add_non_finite_loss_hook, build_runner,
                                        check_data_paths, describe_model, load_config,
                                        load_into, parse_common_args, run_main, set_work_dir,
                                        unwrap_model)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Train an EnFormer config with MMEngine')
    p.add_argument('config', help='config file')
    p.add_argument('--work-dir', help='where logs and checkpoints go '
                   '(default ./work_dirs/<config name>)')
    p.add_argument('--resume', nargs='?', const='auto', default=None, metavar='CKPT',
                   help='resume from CKPT, or from the latest checkpoint of the work dir '
                        'when no CKPT is given')
    p.add_argument('--amp', action='store_true', help='mixed precision (AmpOptimWrapper)')
    p.add_argument('--auto-scale-lr', action='store_true',
                   help='scale the lr by (total batch) / auto_scale_lr.base_batch_size')
    return parse_common_args(p, argv, 'train_cfg.max_epochs=1')


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    set_work_dir(cfg, args.config, args.work_dir)
    cfg.launcher = args.launcher
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise LaunchError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    adapt_to_machine(cfg)
    add_non_finite_loss_hook(cfg)
    loaders = ['train_dataloader']
    if cfg.get('val_cfg') is not None and cfg.get('val_dataloader'):
        loaders.append('val_dataloader')
    check_data_paths(cfg, loaders)

    # load_from goes through our loader (published layouts and URLs, strict unless the config
    # sets load_from_strict = False); mmengine's would log mismatches and train on
    load_from = None if cfg.get('resume') else cfg.get('load_from')
    if load_from:
        cfg.load_from = None
    prepare_distributed(cfg, args.launcher)
    runner = build_runner(cfg)
    what = describe_model(cfg)
    if cfg.get('resume'):
        ckpt = cfg.get('load_from') or find_latest_checkpoint(cfg.work_dir)
        if ckpt is not None:
            load_into(runner.model, ckpt, what, adapt=False, check_only=True)
            print(f'[train] resuming from {ckpt}', flush=True)
        else:
            print(f'[train] --resume: no checkpoint in {cfg.work_dir}, starting from scratch',
                  flush=True)
    elif load_from:
        # initialise first (Runner.train() then skips it), so the weights are not overwritten
        unwrap_model(runner.model).init_weights()
        load_into(runner.model, load_from, what, strict=cfg.get('load_from_strict', True))
    runner.train()
    return runner


if __name__ == '__main__':
    run_main(main)
