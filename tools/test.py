#!/usr/bin/env python
"""Evaluate a checkpoint of any EnFormer config (classification, detection, segmentation).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out RESULTS.pkl]
                         [--cfg-options k=v ...] [--launcher none|pytorch|slurm]

CHECKPOINT is a path or URL, in our layout or a published one (converted on the fly).  It
must fit the config's model exactly (same variant, task and classes); otherwise the missing /
unexpected / mis-shaped keys are listed and nothing is evaluated.
The metrics are printed at the end as one line ``metrics: {...}`` (JSON).
"""
from __future__ import annotations

import argparse
import json
import os

from enformer_core.hub import is_url
from enformer_core.utils.dist import prepare_distributed
from enformer_core.utils.launch import (LaunchError, adapt_to_machine, build_runner,
                                        check_data_paths, describe_model, load_config,
                                        load_into, parse_common_args, run_main, set_work_dir)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Evaluate a checkpoint with MMEngine')
    p.add_argument('config', help='config file')
    p.add_argument('checkpoint', help='checkpoint file (.pth)')
    p.add_argument('--work-dir', help='where the evaluation log goes')
    p.add_argument('--out', help='also dump the raw predictions to this .pkl file')
    return parse_common_args(p, argv, 'test_dataloader.batch_size=64')


def main(argv=None):
    args = parse_args(argv)
    if not is_url(args.checkpoint) and not os.path.isfile(args.checkpoint):
        raise LaunchError(f'checkpoint not found: {args.checkpoint}')
    cfg = load_config(args.config, args.cfg_options)
    set_work_dir(cfg, args.config, args.work_dir)
    cfg.launcher = args.launcher
    cfg.load_from = None  # loaded (strictly) below
    cfg.resume = False
    adapt_to_machine(cfg)
    if not cfg.get('test_dataloader') or cfg.get('test_evaluator') is None:
        raise LaunchError(f'{args.config} has no test_dataloader / test_evaluator')
    check_data_paths(cfg, ['test_dataloader'])
    if args.out:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise LaunchError(f'--out must be a .pkl file, got {args.out}')
        dump = dict(type='DumpResults', out_file_path=args.out)
        ev = cfg.test_evaluator
        cfg.test_evaluator = (list(ev) if isinstance(ev, (list, tuple)) else [ev]) + [dump]

    prepare_distributed(cfg, args.launcher)
    runner = build_runner(cfg)
    load_into(runner.model, args.checkpoint, describe_model(cfg), adapt=False)
    metrics = runner.test()
    if runner.rank == 0:
        print('metrics: ' + json.dumps({k: float(v) if hasattr(v, '__float__') else str(v)
                                        for k, v in (metrics or {}).items()}), flush=True)
    return metrics


if __name__ == '__main__':
    run_main(main)
