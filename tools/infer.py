#!/usr/bin/env python
"""One image (or a folder) in, a prediction out: classification, detection or segmentation.

    python tools/infer.py CONFIG CKPT IMAGES... --out-dir DIR [--device cpu]
                          [--dtype float32|bfloat16|float16|int8|int8-static]
                          [--calibration IMAGES...] [--keep-float PATTERN...]
                          [--score-thr 0.3] [--topk 5]
                          [--cfg-options k=v ...]

The task comes from the config's ``default_scope`` (mmpretrain / mmdet / mmseg; their
inferencers run the config's test pipeline).  CKPT is ``none`` (random initialisation), a
path or a URL, in our layout or a published one (converted on the fly, loaded strictly).
IMAGES are files, folders (their images) or ``fashion-mnist:IDX`` (test split of the Debian
dataset package).  For each image DIR gets ``<name>.json`` (top-5 labels / boxes, scores and
masks / classes present, with class names) and ``<name>.png`` (the picture at the image's
size; segmentation also ``<name>_labels.png``).  A one-line summary per image is printed.

Exit status: 0; 2 for a bad argument (missing config, checkpoint or image); 1 when some
images could not be decoded (the others are still predicted).  Docs: docs/inference.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', help='config file (classification, detection or segmentation)')
    p.add_argument('checkpoint', metavar='CKPT', help='checkpoint path or URL, or "none"')
    p.add_argument('images', nargs='+', metavar='IMAGES',
                   help='image files, folders, or fashion-mnist:IDX')
    p.add_argument('--out-dir', required=True, help='where the JSON and PNG files go')
    p.add_argument('--device', default='cpu')
    p.add_argument('--dtype', default='float32',
                   choices=['float32', 'bfloat16', 'float16', 'int8', 'int8-static'],
                   help='autocast dtype (default float32), or int8 / int8-static: the backbone '
                        'in an int8 CPU form (enformer_core.deploy; int8-static is the faster '
                        'one and calibrates on --calibration)')
    p.add_argument('--calibration', nargs='+', metavar='IMAGES',
                   help='--dtype int8-static: images like the ones to be served, whose '
                        'activation ranges are recorded (default: the first 16 of IMAGES)')
    p.add_argument('--keep-float', nargs='+', default=[], metavar='PATTERN',
                   help='--dtype int8 / int8-static: backbone layers that stay float '
                        '(module-name patterns, e.g. stem.conv1)')
    p.add_argument('--score-thr', type=float, default=0.3, help='detections drawn from here on')
    p.add_argument('--topk', type=int, default=5, help='labels per image (classification)')
    p.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                   help='override config settings, as in tools/test.py')
    return p.parse_args(argv)


def _cfg_options(items):
    if not items:
        return None
    from mmengine.config import DictAction
    ns = argparse.Namespace()
    DictAction(option_strings=['--cfg-options'], dest='o')(None, ns, items)
    return ns.o


def main(argv=None) -> int:
    args = parse_args(argv)
    from enformer_core.datasets import list_images
    from enformer_core.deploy import INT8_FORMS
    from enformer_core.hub import is_url
    if not os.path.isfile(args.config):
        sys.exit(f'error: config {args.config!r} not found')
    if args.checkpoint.lower() != 'none' and not is_url(args.checkpoint) and \
            not os.path.isfile(args.checkpoint):
        sys.exit(f'error: checkpoint {args.checkpoint!r} not found (or pass "none")')
    try:
        specs = list_images(args.images)
    except FileNotFoundError as exc:
        sys.exit(f'error: {exc}')
    missing = [s for s in specs if ':' not in s and not os.path.isfile(s)]
    if missing:
        sys.exit(f'error: image {missing[0]!r} does not exist'
                 + (f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''))
    calibration = None
    if args.calibration and args.dtype != 'int8-static':
        sys.exit(f'error: --calibration goes with --dtype int8-static, not {args.dtype}')
    if args.keep_float and args.dtype not in INT8_FORMS:
        sys.exit(f'error: --keep-float goes with --dtype int8 or int8-static, not {args.dtype}')
    if args.dtype == 'int8-static':
        from enformer_core.inference import calibration_specs
        try:
            calibration = calibration_specs(specs, args.calibration)
        except FileNotFoundError as exc:
            sys.exit(f'error: --calibration: {exc}')

    from enformer_core.checkpoint import CheckpointError
    from enformer_core.hub import WeightsUnavailableError
    from enformer_core.inference import Predictor, unique_names
    from enformer_core.utils.launch import LaunchError
    t0 = time.perf_counter()
    try:
        predictor = Predictor(args.config, args.checkpoint, args.device, args.dtype,
                              args.score_thr, args.topk, _cfg_options(args.cfg_options),
                              calibration=calibration, keep_float=args.keep_float)
    except (CheckpointError, WeightsUnavailableError, LaunchError) as exc:
        sys.exit(f'error: {exc}')
    except (ValueError, OSError) as exc:
        if args.dtype not in INT8_FORMS:
            raise
        sys.exit(f'error: {args.dtype}: {exc}')
    print(f'[infer] {predictor.task}: {predictor.config_name}, weights {args.checkpoint}'
          + (f' ({str(predictor.report).splitlines()[0]})' if predictor.report else
             ' (random initialisation)')
          + f', {len(predictor.classes)} classes from {predictor.classes_from}'
          + (f'; {predictor.form}' if predictor.form else '')
          + f'; ready in {time.perf_counter() - t0:.1f} s', flush=True)
    failed = []
    for spec, name in zip(specs, unique_names(specs)):
        try:
            rec = predictor(spec, args.out_dir, name)
        except (ValueError, OSError) as exc:
            failed.append(spec)
            print(f'[infer] {spec}: skipped: {exc}', file=sys.stderr, flush=True)
            continue
        print(f"[infer] {spec} ({rec['width']}x{rec['height']}, {rec['seconds']:.2f} s): "
              f'{_summary(rec)} -> {os.path.join(args.out_dir, rec["png"])}', flush=True)
    if failed:
        print(f'[infer] {len(failed)} of {len(specs)} images could not be read', file=sys.stderr)
        return 1
    return 0


def _summary(rec: dict) -> str:
    if rec['task'] == 'classification':
        return ', '.join(f"{t['name']} {t['score']:.3f}" for t in rec['topk'][:3])
    if rec['task'] == 'detection':
        shown = [f"{r['name']} {r['score']:.2f}" for r in rec['instances']
                 if r['score'] >= rec['score_thr']][:5]
        return f"{rec['num_drawn']} of {rec['num_instances']} instances >= " \
               f"{rec['score_thr']}" + (f": {', '.join(shown)}" if shown else '')
    top = rec['classes_present'][:3]
    return ', '.join(f"{c['name']} {100 * c['fraction']:.0f} %" for c in top)


if __name__ == '__main__':
    sys.exit(main())
