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
    # CPU deployment forms (enformer_core.deploy.convert_for_cpu) with their logit error
    python tools/analysis/benchmark.py enformer_s --threads 1 --forms deploy --dtype fp32 bf16 int8
    # this tree against another commit: interleaved rounds in two worker processes, ratios
    python tools/analysis/benchmark.py enformer_s --threads 1 --compare-to HEAD~1 --train

Every run first measures this machine's 2048^2 matmul rates (fp32 torch.mm = "sgemm",
fp32 through oneDNN, bf16), prints the load average (warns above 0.5 per core) and reports
each model's achieved rate 2 x GMACs x img/s and its share of the sgemm rate.

``all`` expands to EnFormer S/B/L and every baseline registered with ``create_model``.
img/s is ``batch / mean`` on CUDA (the published method) and ``batch / median`` on CPU.
"""
import argparse
import os
import sys
import time

from enformer_core.utils import write_json


FORMS = ('train-graph', 'deploy')
DTYPES = ('fp32', 'bf16', 'int8', 'int8-static')  # = enformer_core.deploy.FORM_NAMES
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
    p.add_argument('--dtype', nargs='+', choices=DTYPES, default=['fp32'],
                   help='CPU number formats to time (enformer_core.deploy.convert_for_cpu; '
                        'int8-static is calibrated on random images; each one\'s max/mean '
                        'logit error against fp32 is reported)')
    p.add_argument('--compare-to', metavar='REV',
                   help='time this tree against git revision REV (a temporary worktree) in '
                        'interleaved rounds and print the ratios (fp32 forms)')
    p.add_argument('--rounds', type=int, default=5,
                   help='--compare-to: interleaved eval rounds (each --iters // 2 iterations, '
                        'at least 1) and, with --train, training rounds')
    p.add_argument('--compare-malloc', action='store_true',
                   help='time this tree with glibc malloc as is against tune_malloc() '
                        '(interleaved rounds, like --compare-to)')
    p.add_argument('--no-malloc-tuning', action='store_true',
                   help='leave glibc malloc as is (default: enformer_core.utils.malloc.'
                        'tune_malloc(), large buffers stay in the heap between iterations)')
    p.add_argument('--no-gemm', action='store_true',
                   help='skip the matmul-rate measurement (no share columns)')
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
    head = (f"{'model':<{w}}{'form':<12}{'dtype':<12}{'batch':>6}{'size':>10}{'img/s':>10}"
            f"{'ms/img':>9}{'GFLOP/s':>9}{'share':>7}{'train s/step':>13}{'peak MiB':>10}"
            f"{'max|dlogit|':>12}")
    lines = [head, '-' * len(head)]
    for r in rows:
        ev, tr = r.get('eval') or {}, r.get('train') or {}
        size = 'x'.join(map(str, r['shape']))
        share = ev.get('sgemm_share')
        lines.append(f"{r['model']:<{w}}{r['form']:<12}{r.get('dtype', 'fp32'):<12}"
                     f"{ev.get('batch', '-'):>6}{size:>10}"
                     f"{_fmt(ev.get('img_s')):>10}{_fmt(ev.get('ms_per_img'), '.2f'):>9}"
                     f"{_fmt(ev.get('gflop_s')):>9}"
                     f"{'-' if share is None else format(share, '.0%'):>7}"
                     f"{_fmt(tr.get('median_s'), '.3f'):>13}"
                     f"{_fmt(tr.get('peak_mem_mb')):>10}"
                     f"{_fmt((r.get('vs_fp32') or {}).get('max_abs'), '.3g'):>12}")
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


#: published ImageNet-1K top-1 of the baselines (EnFormer's comes from enformer_core.hub)
PUBLISHED_TOP1 = {'coc_tiny': 73.2, 'coc_tiny_plain': 73.8, 'coc_small': 78.1, 'coc_medium': 81.2,
                  'clusterformer_tiny': 81.31, 'clusterformer_small': 83.41}


def _published_top1(name):
    from enformer_core.hub import get_pretrained_cfg
    cfg = get_pretrained_cfg(name)
    return cfg.metric.get('top1') if cfg is not None else PUBLISHED_TOP1.get(name)


def markdown(rows, machine, command, rates=None):
    """Model-zoo table: one line per model (sizes, published top-1, fp32 CPU throughput of
    both forms and the fastest form's share of the machine's sgemm rate)."""
    by_model = {}
    for r in rows:
        if r.get('dtype', 'fp32') == 'fp32':
            by_model.setdefault(r['model'], {})[r['form']] = r
    lines = ['# Model zoo', '',
             '<!-- generated by tools/analysis/benchmark.py; do not edit by hand -->', '',
             f'Generated with `{command}`.', '',
             '| model | params (true) | paper "#params" | GFLOPs @224² | ImageNet top-1 '
             '(published) | CPU img/s, train graph | CPU img/s, deploy | share of sgemm |',
             '|---|---:|---:|---:|---:|---:|---:|---:|']
    for name, forms in by_model.items():
        r = forms.get('train-graph') or next(iter(forms.values()))
        cx = r.get('complexity') or {}
        paper = cx.get('params_paper_mi')
        ev_t = (forms.get('train-graph') or {}).get('eval') or {}
        ev_d = (forms.get('deploy') or {}).get('eval') or {}
        best = max((e for e in (ev_t, ev_d) if e), key=lambda e: e.get('img_s', 0), default={})
        share = best.get('sgemm_share')
        top1 = _published_top1(name)
        lines.append(
            f"| {name} | {cx.get('params', 0):,} | "
            f"{'-' if paper is None else f'{paper:.2f} M'} | "
            f"{_fmt(cx.get('gflops'), '.3f')} | {'-' if top1 is None else top1} | "
            f"{_fmt(ev_t.get('img_s'))} | {_fmt(ev_d.get('img_s')) if ev_d else 'n/a'} | "
            f"{'-' if share is None else f'{100 * share:.0f} %'} |")
    ev = next((r['eval'] for r in rows if r.get('eval')), {})
    rate = '' if not rates else (f" The same run measured a 2048² fp32 `torch.mm` (MKL sgemm) "
                                 f"at {rates['sgemm']:.0f} GFLOP/s and oneDNN fp32 at "
                                 f"{rates['sgemm_onednn']:.0f} GFLOP/s.")
    lines += [
        '',
        '- *params (true)*: every parameter of the classifier as trained (BN branches and layer '
        'scales un-fused). *paper "#params"*: the count after `reparameterize()` (models '
        'without a deploy form: as trained) divided by 2^20, which is how the EnFormer paper '
        'reports it (EnFormer-S: 8,506,224 / 1,048,576 = 8.11). Baseline papers use 10^6.',
        '- *GFLOPs*: fvcore-style multiply-adds (`mmengine.analysis.FlopAnalyzer`: conv, '
        'linear/matmul/bmm, norms, pooling, up-sampling; baddbmm, softmax and element-wise ops '
        'not counted) at 224x224, train graph. *top-1*: the papers\' ImageNet-1K results (FEC '
        'gives none for these variants); not re-measured here.',
        f"- *CPU img/s*: eval, fp32, batch {ev.get('batch', '?')} at 224x224, "
        f"{ev.get('warmup', '?')} warm-up + {ev.get('iters', '?')} timed iterations, "
        'img/s = batch / median iteration time. *share of sgemm*: 2 x GFLOPs x img/s of the '
        'faster form over the machine\'s fp32 matmul rate measured in the same run.' + rate +
        f" Machine: {machine.get('cpu')}, {machine.get('threads')} torch thread(s) of "
        f"{machine.get('nproc')} cores, load average {machine.get('loadavg')} at the start, "
        f"torch {machine.get('torch')}.",
        '- GPU: `tools/analysis/benchmark.py MODEL --device cuda` uses the published method '
        '(eval, fp32, batch 256, 20 warm-up + 100 timed iterations); see '
        '[benchmarks.md](benchmarks.md#gpu).',
        '']
    return '\n'.join(lines)


def _gmacs(lm, shape):
    """fvcore GMACs of the train graph at ``shape`` (what the share columns divide by;
    counted once per model and shape, before any folding or conversion)."""
    import torch
    from enformer_core.analysis import count_flops
    key = (lm.name, tuple(shape))
    if key not in _SWEEP_FLOPS:
        target = lm.model if lm.task == 'classification' else lm.backbone
        with torch.no_grad():
            x = torch.randn(1, lm.in_channels, *shape)
            _SWEEP_FLOPS[key] = count_flops(target.eval(), (x,)).total() / 1e9
    return _SWEEP_FLOPS[key]


def _rates_columns(ev, gmacs, rates, dtype):
    """Achieved GFLOP/s (2 x GMACs x img/s) and its share of the machine's matmul rates."""
    ev['gmacs_per_img'] = gmacs
    ev['gflop_s'] = 2 * gmacs * ev['img_s']
    if rates:
        ev['sgemm_share'] = ev['gflop_s'] / rates['sgemm']
        ev['onednn_fp32_share'] = ev['gflop_s'] / rates['sgemm_onednn']
        if dtype != 'fp32':
            ev['bf16_gemm_share'] = ev['gflop_s'] / rates['bf16']


def run_one(spec, form, args, device, batch, warmup, iters, progress, need_complexity,
            dtype='fp32', rates=None):
    import copy
    from enformer_core.analysis import (benchmark_inference, benchmark_train_step, complexity,
                                        count_flops, has_deploy_form, load_model,
                                        prepare_for_speed, reparameterize)
    import torch
    lm = load_model(spec, device='cpu')
    shape = tuple(args.shape_hw or lm.default_shape)
    row = dict(model=lm.name, form=form, dtype=dtype, task=lm.task, shape=list(shape),
               device=str(device))
    if need_complexity:
        row['complexity'] = complexity(lm, (224, 224) if lm.task == 'classification' else shape)
    gmacs = _gmacs(lm, shape)
    if form == 'deploy':
        if not has_deploy_form(lm.model):
            row['skipped'] = 'no reparameterize()'
            return row
        reparameterize(lm.model)
    model = lm.model.to(device)
    target = model if lm.task == 'classification' else lm.backbone
    if dtype != 'fp32':
        if device.type != 'cpu':
            row['skipped'] = f'--dtype {dtype} is a CPU deployment form'
            return row
        from enformer_core.deploy import convert_named, logit_error
        # int8-static: calibrated on random images (the timing does not depend on values;
        # tools/analysis/deploy_accuracy.py calibrates on real ones for accuracy)
        calibration = [torch.randn(8, lm.in_channels, *shape)]
        converted = convert_named(target, dtype, calibration, fold=False)  # form applied above
        x4 = torch.randn(4, lm.in_channels, *shape)
        row['vs_fp32'] = logit_error(target, converted, x4)
        target = converted
    bench_target = prepare_for_speed(target, args.channels_last, args.compile)
    if lm.task != 'classification':
        row['note'] = 'backbone only'
    common = dict(amp=args.amp, channels_last=args.channels_last, in_channels=lm.in_channels,
                  progress=progress)
    row['eval'] = benchmark_inference(bench_target, batch, shape, warmup, iters,
                                      desc=f'{lm.name} {form} {dtype} eval', **common)
    _rates_columns(row['eval'], gmacs, rates, dtype)
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
    if args.train is not None and form == 'train-graph' and dtype == 'fp32' and (
            not args.train or spec in args.train or lm.name in args.train):
        train_model = copy.deepcopy(model) if lm.task == 'classification' else \
            copy.deepcopy(lm.backbone)
        row['train'] = benchmark_train_step(train_model, args.train_batch, shape,
                                            args.train_warmup, args.train_iters,
                                            desc=f'{lm.name} train step', **common)
        del train_model
    return row


def run_compare(args, models, forms, batch, iters, shape_hw):
    """--compare-to: this tree vs a worktree of the revision; --compare-malloc: this tree
    with and without tune_malloc().  Interleaved rounds in worker processes."""
    import contextlib
    import subprocess
    from pathlib import Path
    from enformer_core.analysis.compare import compare_trees, format_comparison, git_worktree
    import torch
    repo = str(Path(__file__).resolve().parents[2])
    threads = args.threads or torch.get_num_threads()
    tune = not args.no_malloc_tuning
    if args.compare_to:
        rev = subprocess.run(['git', '-C', repo, 'rev-parse', '--short', args.compare_to],
                             check=True, capture_output=True, text=True).stdout.strip()
        what = f'--compare-to {args.compare_to} ({rev}): x = ratio against {rev}'
        tree = git_worktree(rev, repo)
    else:
        what = '--compare-malloc: x = ratio against glibc malloc as is'
        tree = contextlib.nullcontext(repo)
    results = []
    with tree as old:
        trees = ({rev: old, 'this tree': repo} if args.compare_to else
                 {'malloc as is': (repo, False), 'tune_malloc': (repo, True)})
        for name in models:
            for form in forms:
                res = compare_trees(
                    trees, name, form, batch, tuple(shape_hw or (224, 224)), args.rounds,
                    max(1, iters // 2), args.train_batch,
                    args.rounds if args.train is not None and form == 'train-graph' else 0,
                    memory=args.train is not None, threads=threads, tune_malloc=tune)
                results.append(res)
                print(format_comparison([res]).splitlines()[-1], flush=True)
    print()
    print(what + ' (img/s new/old, train s/step old/new, peak training memory new/old)')
    print(format_comparison(results))
    return results


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
    from enformer_core.analysis import gemm_rates, load_warning
    from enformer_core.utils.malloc import tune_malloc
    warning = load_warning()
    malloc_tuned = False if args.no_malloc_tuning else tune_malloc()
    machine = machine_description()
    print(f"device {device} | {machine['cpu']} | torch {machine['torch']} | "
          f"{machine['threads']} threads of {machine['nproc']} cores | "
          f"load average {machine.get('loadavg')} | batch {batch}, {warmup} warm-up + "
          f"{iters} timed" + (' | amp' if args.amp else '')
          + (' | channels-last' if args.channels_last else '')
          + (' | compile' if args.compile else '')
          + (' | malloc tuned' if malloc_tuned else '') + f" | {machine['native']}", flush=True)
    if warning:
        print(warning, flush=True)
    rates = None if args.no_gemm or gpu else gemm_rates()
    if rates:
        print(f"2048^2 matmul on this machine: fp32 torch.mm (sgemm) {rates['sgemm']:.1f}, "
              f"fp32 oneDNN {rates['sgemm_onednn']:.1f}, bf16 {rates['bf16']:.1f} GFLOP/s; "
              'share = 2 x GMACs x img/s / sgemm', flush=True)
    models = expand_models(args.models)
    rows, comparison = [], None
    t0 = time.time()
    if args.compare_to or args.compare_malloc:
        comparison = run_compare(args, models, forms, batch, iters, args.shape_hw)
    else:
        for spec in models:
            for form in forms:
                for dtype in args.dtype:
                    row = run_one(spec, form, args, device, batch, warmup, iters,
                                  not args.no_progress, bool(args.markdown), dtype, rates)
                    rows.append(row)
                    ev = row.get('eval') or {}
                    print(f"[{time.time() - t0:7.1f}s] {row['model']} {form} {dtype}: "
                          + (f"{ev['img_s']:.1f} img/s" if ev else row.get('skipped', ''))
                          + (f", {ev['sgemm_share']:.0%} of sgemm" if 'sgemm_share' in ev
                             else ''), flush=True)
        print()
        print(table(rows))
        sw = sweep_table(rows)
        if sw:
            print()
            print(sw)
    machine['loadavg_end'] = machine_description().get('loadavg')
    print(f"load average at the start {machine.get('loadavg')}, at the end "
          f"{machine['loadavg_end']}")
    result = dict(machine=machine, device=str(device),
                  settings=dict(batch=batch, warmup=warmup, iters=iters, amp=args.amp,
                                channels_last=args.channels_last, compile=args.compile,
                                forms=forms, dtypes=args.dtype, malloc_tuned=malloc_tuned,
                                train_batch=args.train_batch if args.train is not None else None),
                  gemm_gflop_s=rates, load_warning=warning or None, results=rows)
    if comparison is not None:
        result['compare_to'] = dict(rev=args.compare_to or 'malloc', results=comparison)
    if args.json:
        write_json(args.json, result)
    if args.markdown:
        command = 'python tools/analysis/benchmark.py ' + ' '.join(
            argv if argv is not None else sys.argv[1:])
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, 'w') as f:
            f.write(markdown(rows, machine, command, rates))
        print(f'wrote {args.markdown}')
    return result


if __name__ == '__main__':
    main()
