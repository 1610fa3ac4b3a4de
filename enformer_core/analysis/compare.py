"""Same-run A/B timing of two source trees (``tools/analysis/benchmark.py --compare-to REV``).

Each tree runs in its own worker process (``enformer_core`` imported from that tree; the
timing and memory helpers of *this* tree's :mod:`enformer_core.analysis.benchmark`, loaded by
path, so both trees are measured the same way).  The driver interleaves the trees round by
round (alternating which goes first), so a neighbour's load hits both alike, and reports
medians and new/old ratios.  Only ratios from one run are comparable.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

_HELPERS = Path(__file__).with_name('benchmark.py')
_MALLOC = Path(__file__).resolve().parents[1] / 'utils' / 'malloc.py'

_WORKER = r'''
import copy, importlib.util, json, sys, time
import torch
helpers, tree, name, form = sys.argv[1:5]
batch, h, w, train_batch, threads, tune = map(int, sys.argv[5:11])
def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
H = load(helpers, '_bench_helpers')
if tune:
    load(sys.argv[11], '_bench_malloc').tune_malloc()
sys.path.insert(0, tree)
torch.set_num_threads(threads)
from enformer_core import create_model
torch.manual_seed(0)
model = create_model(name).eval()
if form == 'deploy':
    (model if hasattr(model, 'reparameterize') else model.backbone).reparameterize()
x = torch.randn(batch, 3, h, w)
step = None
print(json.dumps({'ready': sys.modules['enformer_core'].__file__}), flush=True)
for line in sys.stdin:
    cmd, n = line.split()
    n = int(n)
    if cmd == 'eval':
        times = []
        with torch.inference_mode():
            for _ in range(n):
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
        print(json.dumps(times), flush=True)
        continue
    if step is None:
        torch.manual_seed(0)
        step, _ = H.make_train_step(create_model(name), train_batch, (h, w))
        step()
    if cmd == 'train':
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        print(json.dumps(times), flush=True)
    elif cmd == 'mem':
        print(json.dumps(H._cpu_peak_alloc(step) / 2 ** 20), flush=True)
'''


@contextlib.contextmanager
def git_worktree(rev: str, repo: Optional[str] = None) -> Iterator[str]:
    """A detached ``git worktree`` of ``rev`` in a temporary folder, removed afterwards."""
    repo = repo or str(Path(__file__).resolve().parents[2])
    tmp = tempfile.mkdtemp(prefix='enformer-compare-')
    path = os.path.join(tmp, 'tree')
    subprocess.run(['git', '-C', repo, 'worktree', 'add', '--detach', '--quiet', path, rev],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(['git', '-C', repo, 'worktree', 'remove', '--force', path], check=False)
        with contextlib.suppress(OSError):
            os.rmdir(tmp)


class _Worker:
    def __init__(self, tree: str, name: str, form: str, batch: int, shape: Tuple[int, int],
                 train_batch: int, threads: int, tune_malloc: bool):
        args = [sys.executable, '-c', _WORKER, str(_HELPERS), tree, name, form, str(batch),
                str(shape[0]), str(shape[1]), str(train_batch), str(threads),
                str(int(tune_malloc)), str(_MALLOC)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        self.module = json.loads(self._read())['ready']

    def _read(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f'benchmark worker exited with {self.proc.wait()}')
        return line

    def ask(self, cmd: str, n: int = 1):
        self.proc.stdin.write(f'{cmd} {n}\n')
        self.proc.stdin.flush()
        return json.loads(self._read())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def compare_trees(trees: Dict[str, Union[str, Tuple[str, bool]]], name: str,
                  form: str = 'train-graph', batch: int = 32,
                  shape: Tuple[int, int] = (224, 224), rounds: int = 5, iters: int = 2,
                  train_batch: int = 16, train_rounds: int = 0, memory: bool = False,
                  threads: int = 1, tune_malloc: bool = True) -> Dict[str, object]:
    """Interleaved timing of model ``name`` in each tree of ``trees`` (label -> path, or
    label -> ``(path, tune_malloc)`` to override ``tune_malloc`` for that worker; the first
    is the baseline).  Returns per-tree medians and ratios against the baseline:
    ``eval_speedup`` (img/s ratio), ``train_speedup`` (s/step ratio old/new) and
    ``memory_ratio`` (peak training memory new/old)."""
    labels = list(trees)
    eval_t: Dict[str, List[float]] = {k: [] for k in labels}
    train_t: Dict[str, List[float]] = {k: [] for k in labels}
    workers: Dict[str, _Worker] = {}
    try:
        for k in labels:
            path, tune = trees[k] if isinstance(trees[k], tuple) else (trees[k], tune_malloc)
            workers[k] = _Worker(path, name, form, batch, shape, train_batch, threads, tune)
            workers[k].ask('eval', 1)  # warm-up
        for r in range(rounds):
            for k in (labels if r % 2 == 0 else labels[::-1]):
                eval_t[k] += workers[k].ask('eval', iters)
        if train_rounds and form == 'train-graph':
            for r in range(train_rounds):
                for k in (labels if r % 2 == 0 else labels[::-1]):
                    train_t[k] += workers[k].ask('train', 1)
        mem = {k: workers[k].ask('mem') for k in labels} if memory and train_rounds else {}
    finally:
        for w in workers.values():
            w.close()
    base = labels[0]
    out: Dict[str, object] = dict(model=name, form=form, batch=batch, shape=list(shape),
                                  trees={k: trees[k] for k in labels}, rounds=rounds,
                                  tune_malloc=tune_malloc,
                                  iters_per_round=iters, per_tree={})
    for k in labels:
        med = statistics.median(eval_t[k])
        row = dict(eval_img_s=batch / med, eval_median_s=med, eval_times=eval_t[k],
                   eval_speedup=statistics.median(eval_t[base]) / med)
        if train_t[k]:
            tm = statistics.median(train_t[k])
            row.update(train_batch=train_batch, train_median_s=tm, train_times=train_t[k],
                       train_speedup=statistics.median(train_t[base]) / tm)
        if mem:
            row.update(peak_step_mb=mem[k], memory_ratio=mem[k] / mem[base])
        out['per_tree'][k] = row
    return out


def format_comparison(results: Sequence[dict]) -> str:
    """A table of :func:`compare_trees` results (ratios against the first tree)."""
    head = (f"{'model':<14}{'form':<12}{'tree':<14}{'img/s':>9}{'x':>7}"
            f"{'train s':>9}{'x':>7}{'peak MiB':>10}{'x':>7}")
    lines = [head, '-' * len(head)]

    def f(v, spec):
        return '-' if v is None else format(v, spec)
    for res in results:
        for k, row in res['per_tree'].items():
            lines.append(f"{res['model']:<14}{res['form']:<12}{k:<14}"
                         f"{row['eval_img_s']:>9.2f}{row['eval_speedup']:>6.2f}x"
                         f"{f(row.get('train_median_s'), '.3f'):>9}"
                         f"{f(row.get('train_speedup'), '.2f'):>6}x"
                         f"{f(row.get('peak_step_mb'), '.0f'):>10}"
                         f"{f(row.get('memory_ratio'), '.2f'):>6}x")
    return '\n'.join(lines)
