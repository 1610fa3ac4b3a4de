"""Inference throughput, training-step time and peak memory of configs or model names.

    # the published method on a GPU: eval, fp32, batch 256 at 224², 20 warm-up + 100 timed
    python tools/analysis/benchmark.py enformer_s --device cuda
    # CPU default (batch 32, 3 warm-up + 10 timed, median), train-graph and deploy forms,
    # training step at batch 16 with peak memory, every registered model
    python tools/analysis/benchmark.py all --forms train-graph deploy --train --json out.json
    # how cost grows with pixels (batch scaled to keep the pixels per batch constant)
    python tools/analysis/benchmark.py enformer_s --sweep 224 448 896
    # regenerate docs/model_zoo.md
    python tools/analysis/benchmark.py all --forms train-graph deploy --markdown docs/model_zoo.md

``all`` expands to EnFormer S/B/L and every baseline registered with ``create_model``.
img/s is ``batch / mean`` on CUDA (the published method) and ``batch / median`` on CPU.
"""
import argparse
import json
import os
import sys
import time


FORMS = ('train-graph', 'deploy')
_SWEEP_FLOPS = {}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('models', nargs='+', metavar='CONFIG|MODEL',
                   help='config files, create_model names, or "all"')
    p.add_argument('--device', default='auto', help='auto (cuda if available), cpu or cuda')
    p.add_argument('--batch', type=int, help='eval batch (default: 256 on CUDA, 32 on CPU)')
    p.add_argument('--shape', type=int, nargs='+', metavar='SIZE',
                   help='input H [W] (default: the task\'s size, 224 for classification)')
    p.add_argument('--warmup', type=int, help='warm-up iterations (default: 20 CUDA, 3 CPU)')
    p.add_argument('--iters', type=int, help='timed iterations (default: 100 CUDA, 10 CPU)')
    p.add_argument('--threads', type=int, help='torch CPU threads (default: torch\'s choice)')
    p.add_argument('--forms', nargs='+', choices=FORMS, default=None,
                   help='model forms to time (default: train-graph; deploy = reparameterize())')
    p.add_argument('--deploy', action='store_true', help='shorthand for --forms deploy')
    p.add_argument('--amp', action='store_true', help='autocast (fp16 on CUDA, bf16 on CPU)')
    p.add_argument('--channels-last', action='store_true', help='channels-last memory format')
    p.add_argument('--compile', action='store_true', help='torch.compile the model')
    p.add_argument('--train', nargs='*', metavar='MODEL', default=None,
                   help='also time a training step (forward+backward+AdamW) and its peak '
                        'memory; optionally only for the listed models')
    p.add_argument('--train-batch', type=int, default=16)
    p.add_argument('--train-iters', type=int, default=3)
    p.add_argument('--train-warmup', type=int, default=1)
    p.add_argument('--sweep', type=int, nargs='+', metavar='SIZE',
                   help='input sizes for a cost-vs-pixels sweep (e.g. 224 448 896); the batch '
                        'shrinks to keep the pixels per batch constant')
    p.add_argument('--markdown', metavar='MD', help='write a model-zoo markdown table')
    p.add_argument('--json', metavar='OUT', help='write all results as JSON')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    return p.parse_args(argv)


def expand_models(specs):
    from enformer_core.models import list_models
    out = []
    for s in specs:
        if s == 'all':
            names = list_models()
            enf = [n for n in ('enformer_s', 'enformer_b', 'enformer_l') if n in names]
            out += enf + [n for n in names if n not in enf]
        else:
            out.append(s)
    return list(dict.fromkeys(out))


def _fmt(v, spec='.1f'):
    return '-' if v is None else format(v, spec)


def table(rows):
    w = max([24] + [len(str(r['model'])) + 2 for r in rows])  # long config names stay aligned
    head = (f"{'model':<{w}}{'form':<12}{'batch':>6}{'size':>10}{'img/s':>10}"
            f"{'ms/img':>9}{'train s/step':>13}{'peak MiB':>10}")
    lines = [head, '-' * len(head)]
    for r in rows:
        ev, tr = r.get('eval') or {}, r.get('train') or {}
        size = 'x'.join(map(str, r['shape']))
        lines.append(f"{r['model']:<{w}}{r['form']:<12}{ev.get('batch', '-'):>6}{size:>10}"
                     f"{_fmt(ev.get('img_s')):>10}{_fmt(ev.get('ms_per_img'), '.2f'):>9}"
                     f"{_fmt(tr.get('median_s'), '.3f'):>13}"
                     f"{_fmt(tr.get('peak_mem_mb')):>10}")
        if r.get('skipped'):
            lines[-1] = f"{r['model']:<{w}}{r['form']:<12}  skipped: {r['skipped']}"
    return '\n'.join(lines)


def sweep_table(rows):
    lines = []
    for r in rows:
        if not r.get('sweep'):
            continue
        lines.append(f"{r['model']} ({r['form']}): cost vs pixels")
        lines.append(f"{'size':>10}{'batch':>7}{'GFLOPs/img':>12}{'ms/img':>10}"
                     f"{'ms/Mpx':>10}{'vs first':>10}")
        base = r['sweep'][0]['ms_per_mpx']
        for s in r['sweep']:
            lines.append(f"{s['shape'][0]:>5}x{s['shape'][1]:<4}{s['batch']:>7}"
                         f"{_fmt(s.get('gflops'), '.3f'):>12}{s['ms_per_img']:>10.2f}"
                         f"{s['ms_per_mpx']:>10.2f}{s['ms_per_mpx'] / base:>9.2f}x")
    return '\n'.join(lines)


def markdown(rows, machine, command):
    """Model-zoo table: one line per model (train-graph and deploy throughput)."""
    by_model = {}
    for r in rows:
        by_model.setdefault(r['model'], {})[r['form']] = r
    lines = ['# Model zoo', '',
             '<!-- generated by tools/analysis/benchmark.py; do not edit by hand -->', '',
             f'Generated with `{command}`.', '',
             '| model | params (true) | params, paper convention | GFLOPs @224² | '
             'CPU img/s (train graph) | CPU img/s (deploy) |',
             '|---|---:|---:|---:|---:|---:|']
    for name, forms in by_model.items():
        r = forms.get('train-graph') or next(iter(forms.values()))
        cx = r.get('complexity') or {}
        paper = cx.get('params_paper_mi')
        ev_t = (forms.get('train-graph') or {}).get('eval') or {}
        ev_d = (forms.get('deploy') or {}).get('eval') or {}
        lines.append(
            f"| {name} | {cx.get('params', 0):,} | "
            f"{'-' if paper is None else f'{paper:.2f} Mi'} | "
            f"{_fmt(cx.get('gflops'), '.3f')} | {_fmt(ev_t.get('img_s'))} | "
            f"{_fmt(ev_d.get('img_s')) if ev_d else 'n/a'} |")
    ev = next((r['eval'] for r in rows if r.get('eval')), {})
    lines += [
        '',
        '- *params (true)*: every parameter of the classifier as trained (BN branches and layer '
        'scales un-fused).',
        '- *paper convention*: the parameter count after `reparameterize()` (models without a '
        'deploy form: as trained) divided by 2^20, which is how the EnFormer paper reports '
        '"#params" (EnFormer-S: 8,506,224 / 1,048,576 = 8.11). Baseline papers use 10^6.',
        '- *GFLOPs*: fvcore-style multiply-adds (`mmengine.analysis.FlopAnalyzer`: conv, '
        'linear/matmul/bmm, norms, pooling, up-sampling; baddbmm, softmax and element-wise ops '
        'not counted) at 224x224, train graph.',
        f"- *CPU img/s*: eval, fp32, batch {ev.get('batch', '?')} at 224x224, "
        f"{ev.get('warmup', '?')} warm-up + {ev.get('iters', '?')} timed iterations, "
        'img/s = batch / median iteration time. Machine: '
        f"{machine.get('cpu')}, {machine.get('threads')} torch threads of "
        f"{machine.get('nproc')} cores, load average {machine.get('loadavg')} (a shared "
        f"machine: compare ratios, not absolute values), torch {machine.get('torch')}.",
        '- No published GPU throughput figures are given in the specification, so that column '
        'is left out; `tools/analysis/benchmark.py MODEL --device cuda` measures it with the '
        'published method (eval, fp32, batch 256, 20 warm-up + 100 timed iterations).',
        '']
    return '\n'.join(lines)


def run_one(spec, form, args, device, batch, warmup, iters, progress, need_complexity):
    import copy
    from enformer_core.analysis import (benchmark_inference, benchmark_train_step, complexity,
                                        count_flops, has_deploy_form, load_model,
                                        prepare_for_speed, reparameterize)
    import torch
    lm = load_model(spec, device='cpu')
    shape = tuple(args.shape_hw or lm.default_shape)
    row = dict(model=lm.name, form=form, task=lm.task, shape=list(shape), device=str(device))
    if need_complexity:
        row['complexity'] = complexity(lm, (224, 224) if lm.task == 'classification' else shape)
    if form == 'deploy':
        if not has_deploy_form(lm.model):
            row['skipped'] = 'no reparameterize()'
            return row
        reparameterize(lm.model)
    model = lm.model.to(device)
    bench_target = prepare_for_speed(model if lm.task == 'classification' else lm.backbone,
                                     args.channels_last, args.compile)
    if lm.task != 'classification':
        row['note'] = 'backbone only'
    common = dict(amp=args.amp, channels_last=args.channels_last, in_channels=lm.in_channels,
                  progress=progress)
    row['eval'] = benchmark_inference(bench_target, batch, shape, warmup, iters,
                                      desc=f'{lm.name} {form} eval', **common)
    if args.sweep:
        row['sweep'] = []
        ref = args.sweep[0]
        for s in args.sweep:
            b = max(1, round(batch * (ref / s) ** 2))
            res = benchmark_inference(bench_target, b, (s, s), min(warmup, 2),
                                      max(2, iters // 2), desc=f'{lm.name} {s}px', **common)
            key = (lm.name, s)
            if key not in _SWEEP_FLOPS:  # same graph size for both forms: count once
                with torch.no_grad():
                    x = torch.randn(1, lm.in_channels, s, s, device=device)
                    _SWEEP_FLOPS[key] = count_flops(lm.backbone, (x,)).total() / 1e9
            res['gflops'] = _SWEEP_FLOPS[key]
            res['ms_per_mpx'] = res['ms_per_img'] / (s * s / 1e6)
            row['sweep'].append(res)
    if args.train is not None and form == 'train-graph' and (
            not args.train or spec in args.train or lm.name in args.train):
        train_model = copy.deepcopy(model) if lm.task == 'classification' else \
            copy.deepcopy(lm.backbone)
        row['train'] = benchmark_train_step(train_model, args.train_batch, shape,
                                            args.train_warmup, args.train_iters,
                                            desc=f'{lm.name} train step', **common)
        del train_model
    return row


def main(argv=None):
    args = parse_args(argv)
    import torch
    from enformer_core.analysis import machine_description
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device('cuda' if args.device == 'auto' and torch.cuda.is_available()
                          else ('cpu' if args.device == 'auto' else args.device))
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda requested but CUDA is not available')
    gpu = device.type == 'cuda'
    batch = args.batch or (256 if gpu else 32)
    warmup = args.warmup if args.warmup is not None else (20 if gpu else 3)
    iters = args.iters or (100 if gpu else 10)
    args.shape_hw = None
    if args.shape:
        args.shape_hw = (args.shape[0], args.shape[-1])
    forms = ['deploy'] if args.deploy else (args.forms or ['train-graph'])
    machine = machine_description()
    print(f"device {device} | {machine['cpu']} | torch {machine['torch']} | "
          f"{machine['threads']} threads of {machine['nproc']} cores | "
          f"load {machine.get('loadavg')} | batch {batch}, {warmup} warm-up + {iters} timed"
          + (' | amp' if args.amp else '') + (' | channels-last' if args.channels_last else '')
          + (' | compile' if args.compile else ''), flush=True)
    models = expand_models(args.models)
    rows = []
    t0 = time.time()
    for spec in models:
        for form in forms:
            row = run_one(spec, form, args, device, batch, warmup, iters,
                          not args.no_progress, need_complexity=bool(args.markdown))
            rows.append(row)
            ev = row.get('eval') or {}
            print(f"[{time.time() - t0:7.1f}s] {row['model']} {form}: "
                  + (f"{ev['img_s']:.1f} img/s" if ev else row.get('skipped', '')), flush=True)
    print()
    print(table(rows))
    sw = sweep_table(rows)
    if sw:
        print()
        print(sw)
    result = dict(machine=machine, device=str(device),
                  settings=dict(batch=batch, warmup=warmup, iters=iters, amp=args.amp,
                                channels_last=args.channels_last, compile=args.compile,
                                forms=forms, train_batch=args.train_batch if args.train is not None else None),
                  results=rows)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
        print(f'wrote {args.json}')
    if args.markdown:
        command = 'python tools/analysis/benchmark.py ' + ' '.join(
            argv if argv is not None else sys.argv[1:])
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, 'w') as f:
            f.write(markdown(rows, machine, command))
        print(f'wrote {args.markdown}')
    return result


if __name__ == '__main__':
    main()
