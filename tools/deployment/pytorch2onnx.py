#!/usr/bin/env python
"""Export a classifier, or the backbone of a detector / segmentor, to ONNX (and TorchScript).

    python tools/deployment/pytorch2onnx.py MODEL [--checkpoint CKPT] --out model.onnx
        [--shape H W] [--no-dynamic-batch] [--no-dynamic-size] [--opset 17]
        [--check-shape H W ...] [--tolerance 1e-4] [--jit model.pt]

MODEL is a ``create_model`` name (``enformer_s``: the whole classifier) or a config: a
classification config exports the ``ImageClassifier`` (normalised image -> logits), a
detection or segmentation config exports its backbone (image -> one map per stage).
CKPT (path or URL, our layout or a published one) is loaded strictly; without it the
weights are random.  By default the batch and the image size are dynamic.

The graph is checked with onnxruntime against PyTorch at batch 1 and 3 of ``--shape`` and,
when the size is dynamic, at ``--check-shape`` (default: 1.5x the height, 2x the width); the
largest absolute difference is printed and must stay under ``--tolerance``.  ``--jit``
also saves ``torch.jit.trace`` of the same export-mode model (runs at any size).
Docs: docs/deployment.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('model', metavar='MODEL', help='create_model name or config file')
    p.add_argument('--checkpoint', help='weights (path or URL); default: random init')
    p.add_argument('--out', required=True, help='output .onnx file')
    p.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                   help='example input size (default: 224x224 for classifiers, 512x512 '
                        'for dense backbones)')
    p.add_argument('--no-dynamic-batch', action='store_true', help='fix the batch to 1')
    p.add_argument('--no-dynamic-size', action='store_true', help='fix the image size')
    p.add_argument('--opset', type=int, default=17)
    p.add_argument('--check-shape', type=int, nargs=2, metavar=('H', 'W'),
                   help='second size checked when the size is dynamic')
    p.add_argument('--tolerance', type=float, default=1e-4)
    p.add_argument('--jit', metavar='FILE', help='also save torch.jit.trace to FILE')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from enformer_core.analysis.loading import is_config_path, load_model
    from enformer_core.checkpoint import CheckpointError
    from enformer_core.export import (ExportError, export_onnx, exportable, onnx_max_abs_diff,
                                      trace)
    if is_config_path(args.model) and not os.path.isfile(args.model):
        sys.exit(f'error: config {args.model!r} not found')
    try:
        lm = load_model(args.model, args.checkpoint)
    except (CheckpointError, ValueError, FileNotFoundError) as exc:
        sys.exit(f'error: {exc}')
    model = lm.model
    module, _ = exportable(model)
    dense = not lm.task == 'classification'
    h, w = args.shape or ((512, 512) if dense else (224, 224))
    c = lm.in_channels
    t0 = time.perf_counter()
    try:
        names = export_onnx(module, args.out, (1, c, h, w), not args.no_dynamic_batch,
                            not args.no_dynamic_size, args.opset)
    except ExportError as exc:
        sys.exit(f'error: {exc}')
    size_mb = os.path.getsize(args.out) / 2 ** 20
    dyn = [a for a, off in (('batch', args.no_dynamic_batch), ('height, width',
                                                                 args.no_dynamic_size)) if not off]
    print(f'[onnx] {lm.name} ({"backbone" if dense else "classifier"}) -> {args.out} '
          f'({size_mb:.1f} MiB, opset {args.opset}, {time.perf_counter() - t0:.1f} s); '
          f'outputs {names}; dynamic: {", ".join(dyn) or "nothing"}', flush=True)

    checks = [(1, h, w)]
    if not args.no_dynamic_batch:
        checks.append((3, h, w))
    if not args.no_dynamic_size:
        ch, cw = args.check_shape or (max(32, (h * 3 // 2) // 32 * 32), w * 2)
        checks.append((2 if not args.no_dynamic_batch else 1, ch, cw))
    torch.manual_seed(0)
    inputs = [torch.randn(b, c, hh, ww) for b, hh, ww in checks]
    diffs = onnx_max_abs_diff(args.out, module, inputs)
    worst = 0.0
    for (b, hh, ww), d in zip(checks, diffs):
        print(f'[onnx] onnxruntime vs PyTorch, input {b}x{c}x{hh}x{ww}: max |diff| = {d:.3g}',
              flush=True)
        worst = max(worst, d)
    if args.jit:
        traced = trace(module, torch.randn(1, c, h, w))
        traced.save(args.jit)
        x = inputs[-1]
        with torch.no_grad():
            ref, got = module(x), traced(x)
        ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        got = [got] if isinstance(got, torch.Tensor) else list(got)
        d = max(float((a - b).abs().max()) for a, b in zip(ref, got))
        print(f'[jit] torch.jit.trace at {h}x{w} -> {args.jit}; at {tuple(x.shape)}: max |diff| '
              f'= {d:.3g}', flush=True)
        worst = max(worst, d)
    if worst > args.tolerance:
        print(f'[onnx] FAILED: max |diff| {worst:.3g} > tolerance {args.tolerance}',
              file=sys.stderr)
        return 1
    print(f'[onnx] OK: every check within {args.tolerance}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
