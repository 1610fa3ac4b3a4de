"""Accuracy effect of the CPU deployment forms: top-1 agreement with fp32 (and each form's
top-1) over a config's test set, plus the max/mean logit difference.

    # the demo checkpoint (make demo) on the full Fashion-MNIST test set (10 000 images)
    python tools/analysis/deploy_accuracy.py \\
        classification/configs/demo/enformer-s_fashion-mnist-64px.py \\
        $(cat work_dirs/demo_fashion_mnist/last_checkpoint) --dtype bf16 int8 int8-static \\
        --json acc.json

    # which layers cost the int8 form its accuracy: the error with each group kept float
    python tools/analysis/deploy_accuracy.py CONFIG CKPT --dtype int8-static --sensitivity

A thin command line over ``enformer_core.deploy.convert_named``, ``agreement`` and
``keep_float_sensitivity``.
"""
import argparse
import os
import time

from enformer_core.utils import write_json


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='a classification config (its test_dataloader is used)')
    p.add_argument('checkpoint', help="weights (path/URL, any layout) or 'none' (random)")
    p.add_argument('--dtype', nargs='+', default=['bf16', 'int8'],
                   choices=['fp32', 'bf16', 'int8', 'int8-static'],
                   help='forms to compare with fp32 (int8-static: calibrated on '
                        '--calibration-batches batches of the training set)')
    p.add_argument('--calibration-batches', type=int, default=8, metavar='N',
                   help='training batches (test pipeline) that calibrate int8-static')
    p.add_argument('--keep-float', nargs='+', default=[], metavar='PATTERN',
                   help='int8 forms: layers that stay float (module-name patterns of the '
                        'classifier, e.g. backbone.stem.conv1)')
    p.add_argument('--sensitivity', action='store_true',
                   help='also the logit error of the int8 form (static when int8-static is '
                        'among --dtype) with each group of layers kept float, on the first '
                        'test batch: which --keep-float pattern buys back the most')
    p.add_argument('--no-fold', action='store_true', help='keep the train graph (no '
                   'reparameterize) in the converted models')
    p.add_argument('--max-batches', type=int, help='only the first N test batches')
    p.add_argument('--threads', type=int)
    p.add_argument('--json', metavar='OUT')
    return p.parse_args(argv)


def test_batches(lm, max_batches=None):
    """``(normalised images, labels)`` of the config's test set (the model's own data
    preprocessor does the normalisation)."""
    import torch
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner
    init_default_scope(lm.config.get('default_scope', 'mmpretrain'))
    loader = Runner.build_dataloader(lm.config.test_dataloader)
    pre = lm.model.data_preprocessor
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            return
        data = pre(batch, False)
        labels = [s.gt_label for s in data['data_samples']]
        yield data['inputs'].float(), (torch.cat(labels) if labels else None)


def calibration_batches(lm, n):
    """The first ``n`` batches of the config's training images through its *test* pipeline
    (no augmentation), normalised: int8-static calibrates on data it is not scored on."""
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner
    init_default_scope(lm.config.get('default_scope', 'mmpretrain'))
    cfg = lm.config.train_dataloader.copy()
    cfg.dataset = cfg.dataset.copy()
    cfg.dataset.pipeline = lm.config.test_dataloader.dataset.pipeline
    cfg.sampler = dict(type='DefaultSampler', shuffle=False)
    cfg.batch_size = lm.config.test_dataloader.batch_size
    out = []
    for i, batch in enumerate(Runner.build_dataloader(cfg)):
        if i >= n:
            break
        out.append(lm.model.data_preprocessor(batch, False)['inputs'].float())
    return out


def main(argv=None):
    args = parse_args(argv)
    import torch
    from enformer_core.analysis import load_model
    from enformer_core.deploy import (INT8_FORMS, agreement, convert_named,
                                      keep_float_sensitivity)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.config, args.checkpoint)
    if lm.task != 'classification':
        raise SystemExit('deploy_accuracy compares classifiers (logits); got a '
                         f'{lm.task} model')
    batches = list(test_batches(lm, args.max_batches))
    results = dict(config=args.config, checkpoint=args.checkpoint,
                   images=sum(x.shape[0] for x, _ in batches), loadavg=list(os.getloadavg()),
                   forms={})
    calibration = (calibration_batches(lm, args.calibration_batches)
                   if 'int8-static' in args.dtype else None)
    if calibration is not None:
        results['calibration_images'] = sum(x.shape[0] for x in calibration)
    for dtype in args.dtype:
        t0 = time.time()
        keep = args.keep_float if dtype in INT8_FORMS else ()
        model = convert_named(lm.model, dtype, calibration, fold=not args.no_fold,
                              keep_float=keep)
        res = agreement(lm.model, model, batches)
        res['seconds'] = time.time() - t0
        results['forms'][dtype] = res
        acc = (f", top-1 fp32 {res['top1_fp32']:.2%} / {dtype} {res['top1_x']:.2%}"
               if 'top1_fp32' in res else '')
        print(f"{dtype}: agreement with fp32 {res['top1_agreement']:.2%} over "
              f"{res['images']} images{acc}; logits max |diff| "
              f"{res['max_abs_logit_diff']:.4g}, mean {res['mean_abs_logit_diff']:.4g}",
              flush=True)
    if args.sensitivity:
        rows = keep_float_sensitivity(lm.model, batches[0][0], calibration)
        results['sensitivity'] = rows
        form = 'int8-static' if calibration is not None else 'int8'
        print(f'{form}, logit error on {batches[0][0].shape[0]} test images with each group '
              'kept float (best first):')
        for r in rows:
            print(f"  {r['pattern'] or '(all int8)':48s} {r['layers']:3d} layers: mean |diff| "
                  f"{r['mean_abs']:.4f}, max {100 * r['max_rel']:5.2f} % of the largest logit, "
                  f"top-1 agreement {r['top1_agreement']:.1%}", flush=True)
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == '__main__':
    main()
