#!/usr/bin/env python
"""Evaluate a checkpoint of any EnFormer config (classification, detection, segmentation).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out RESULTS.pkl]
                         [--dtype fp32|bf16|int8|int8-static] [--calibration-images 256]
                         [--keep-float PATTERN ...]
                         [--cfg-options k=v ...] [--launcher none|pytorch|slurm]

CHECKPOINT is a path or URL, in our layout or a published one (converted on the fly).  It
must fit the config's model exactly (same variant, task and classes); otherwise the missing /
unexpected / mis-shaped keys are listed and nothing is evaluated.
The metrics are printed at the end as one line ``metrics: {...}`` (JSON).
``--dtype`` evaluates the backbone in a CPU deployment form (``enformer_core.deploy``; necks
and heads stay float32): how much a deployed model's metric moves, measured, not assumed.
``int8-static`` records its activation ranges on the first ``--calibration-images`` test
images (whole batches; images only, no labels) before the evaluation.  ``--keep-float``
leaves the backbone layers it names float (``fnmatch`` patterns such as ``stem.conv1``).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os

from enformer_core.deploy import FORM_NAMES, INT8_FORMS, convert_backbone_for_cpu
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
    p.add_argument('--dtype', choices=FORM_NAMES,
                   help='evaluate the backbone in this CPU deployment form (fp32: folded; '
                        'int8-static: calibrated on test batches first)')
    p.add_argument('--calibration-images', type=int, default=256, metavar='N',
                   help='--dtype int8-static: how many test images calibrate it (whole '
                        'batches, default 256)')
    p.add_argument('--keep-float', nargs='+', default=[], metavar='PATTERN',
                   help='--dtype int8 / int8-static: backbone layers that stay float '
                        '(module-name patterns, e.g. stem.conv1 or "stages.3.*")')
    return parse_common_args(p, argv, 'test_dataloader.batch_size=64')


def calibrate_on_test_images(runner, cfg, images: int) -> None:
    """Run the model over the test batches that hold the first ``images`` images (a fresh
    loader, so the evaluation still sees every image)."""
    from mmengine.runner import Runner
    loader = Runner.build_dataloader(copy.deepcopy(cfg.test_dataloader), seed=0)
    batches = math.ceil(images / (loader.batch_size or 1))
    for i, batch in enumerate(loader):
        if i >= batches:
            break
        runner.model.test_step(batch)


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
    if args.dtype and args.launcher != 'none':
        raise LaunchError(f'--dtype {args.dtype} evaluates a CPU form in one process: use '
                          '--launcher none')
    if args.dtype == 'int8-static' and args.calibration_images < 1:
        raise LaunchError('--calibration-images must be at least 1')
    if args.keep_float and args.dtype not in INT8_FORMS:
        raise LaunchError('--keep-float goes with --dtype int8 or int8-static')
    if args.out:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise LaunchError(f'--out must be a .pkl file, got {args.out}')
        dump = dict(type='DumpResults', out_file_path=args.out)
        ev = cfg.test_evaluator
        cfg.test_evaluator = (list(ev) if isinstance(ev, (list, tuple)) else [ev]) + [dump]

    prepare_distributed(cfg, args.launcher)
    runner = build_runner(cfg)
    load_into(runner.model, args.checkpoint, describe_model(cfg), adapt=False)
    if args.dtype:
        try:
            form = convert_backbone_for_cpu(
                runner.model, args.dtype,
                lambda: calibrate_on_test_images(runner, cfg, args.calibration_images),
                args.keep_float)
        except (ValueError, RuntimeError) as exc:
            raise LaunchError(f'--dtype {args.dtype}: {exc}') from None
        runner.logger.info(form)
        print(f'[test] {form}', flush=True)
    metrics = runner.test()
    if runner.rank == 0:
        print('metrics: ' + json.dumps({k: float(v) if hasattr(v, '__float__') else str(v)
                                        for k, v in (metrics or {}).items()}), flush=True)
    return metrics


if __name__ == '__main__':
    run_main(main)
