"""Eval throughput, training-step time and peak memory (``tools/analysis/benchmark.py``)."""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile
import time
from typing import Any, Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device('cpu')


def _forward(model: nn.Module, x: torch.Tensor):
    return model(x)


def _progress(total: int, desc: str, enabled: bool):
    try:
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, leave=False, disable=not enabled,
                    dynamic_ncols=True)
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext(type('P', (), {'update': lambda *a: None})())


def prepare_for_speed(model: nn.Module, channels_last: bool = False,
                      compile: bool = False) -> nn.Module:
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    return model


def benchmark_inference(model: nn.Module, batch: int = 32, shape: Tuple[int, int] = (224, 224),
                        warmup: int = 3, iters: int = 10, amp: bool = False,
                        channels_last: bool = False, in_channels: int = 3,
                        progress: bool = True, desc: str = 'eval') -> Dict[str, Any]:
    """Eval-mode throughput.  Every timed iteration is synchronised and timed on its own;
    ``img_s`` is ``batch / mean`` on CUDA (the published method) and ``batch / median`` on
    CPU (robust to neighbours on a shared machine); both are returned."""
    device = _model_device(model)
    model.eval()
    x = torch.randn(batch, in_channels, *shape, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    amp_ctx = (torch.autocast(device.type, dtype=torch.float16 if device.type == 'cuda'
                              else torch.bfloat16) if amp else contextlib.nullcontext())
    times = []
    with torch.inference_mode(), amp_ctx, _progress(warmup + iters, desc, progress) as bar:
        for i in range(warmup + iters):
            _sync(device)
            t0 = time.perf_counter()
            _forward(model, x)
            _sync(device)
            dt = time.perf_counter() - t0
            if i >= warmup:
                times.append(dt)
            bar.update(1)
    mean, med = statistics.fmean(times), statistics.median(times)
    return dict(batch=batch, shape=list(shape), iters=iters, warmup=warmup,
                mean_s=mean, median_s=med, img_s_mean=batch / mean, img_s_median=batch / med,
                img_s=batch / (mean if device.type == 'cuda' else med),
                ms_per_img=1e3 * (mean if device.type == 'cuda' else med) / batch)


def _loss(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        if out.dim() == 2:  # logits
            target = torch.arange(out.shape[0], device=out.device) % out.shape[1]
            return F.cross_entropy(out, target)
        return out.float().pow(2).mean()
    if isinstance(out, (list, tuple)):
        return sum(_loss(o) for o in out)
    if isinstance(out, dict):
        return sum(_loss(o) for o in out.values())
    raise TypeError(f'cannot make a loss from a {type(out).__name__} output')


def _cpu_peak_alloc(fn) -> int:
    """Peak bytes allocated by the CPU allocator while ``fn`` runs, above the level at its
    start (read from the profiler's memory events; independent of malloc caching)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    fd, path = tempfile.mkstemp(suffix='.json')
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f).get('traceEvents', [])
    finally:
        os.unlink(path)
    totals = [e['args'].get('Total Allocated', 0) for e in events
              if e.get('name') == '[memory]' and e.get('args', {}).get('Device Type', 0) == 0]
    return int(max(totals, default=0))


def make_train_step(model: nn.Module, batch: int = 16, shape: Tuple[int, int] = (224, 224),
                    amp: bool = False, channels_last: bool = False, in_channels: int = 3):
    """``(step, optimizer)``: ``step()`` runs one training step (forward, loss, backward,
    AdamW step) of ``model`` (put in train mode) on a fixed random batch."""
    device = _model_device(model)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    x = torch.randn(batch, in_channels, *shape, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    amp_ctx = (lambda: torch.autocast(device.type, dtype=torch.float16 if device.type == 'cuda'
                                      else torch.bfloat16)) if amp else contextlib.nullcontext

    def step():
        opt.zero_grad(set_to_none=True)
        with amp_ctx():
            loss = _loss(model(x))
        loss.backward()
        opt.step()
    return step, opt


def benchmark_train_step(model: nn.Module, batch: int = 16, shape: Tuple[int, int] = (224, 224),
                         warmup: int = 1, iters: int = 3, amp: bool = False,
                         channels_last: bool = False, in_channels: int = 3,
                         measure_memory: bool = True, progress: bool = True,
                         desc: str = 'train') -> Dict[str, Any]:
    """Time of one training step (forward + loss + backward + AdamW step) and its peak
    memory.  CUDA: ``max_memory_allocated`` (absolute, and above the pre-step level).
    CPU: peak bytes allocated during one step above the pre-step level (profiler memory
    events), plus the resident size of parameters, gradients-free optimizer state."""
    device = _model_device(model)
    step, opt = make_train_step(model, batch, shape, amp, channels_last, in_channels)
    times = []
    with _progress(warmup + iters, desc, progress) as bar:
        for i in range(warmup + iters):
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
            bar.update(1)
    state_bytes = sum(p.numel() * p.element_size() for p in model.parameters()) + \
        sum(b.numel() * b.element_size() for b in model.buffers()) + \
        sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
            if isinstance(t, torch.Tensor))
    res = dict(batch=batch, shape=list(shape), iters=iters, warmup=warmup,
               mean_s=statistics.fmean(times), median_s=statistics.median(times),
               state_mb=state_bytes / 2 ** 20)
    if measure_memory:
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            step()
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
            res.update(peak_mem_mb=peak / 2 ** 20, peak_step_mb=(peak - before) / 2 ** 20,
                       memory_method='torch.cuda.max_memory_allocated')
        else:
            peak = _cpu_peak_alloc(step)
            res.update(peak_step_mb=peak / 2 ** 20,
                       peak_mem_mb=(peak + state_bytes) / 2 ** 20,
                       memory_method='profiler memory events (peak allocated during one '
                                     'step above the pre-step level) + parameters, buffers '
                                     'and optimizer state')
    model.eval()
    return res


def gemm_rate(n: int = 2048, dtype: torch.dtype = torch.float32, onednn: bool = False,
              seconds: float = 0.5) -> float:
    """GFLOP/s of an ``n x n x n`` matmul at the current thread count (best of the repeats
    in ``seconds``).  ``onednn``: through oneDNN (the kernels of the fused inference paths)
    instead of ``torch.mm`` (MKL's sgemm for fp32 on CPU)."""
    # imported here: compare.py's workers load this file on its own (no package) to time
    # another tree with this tree's timing code, and never call gemm_rate
    from ..ops import fused
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    if onednn and not fused.HAS_ONEDNN_LINEAR:
        return float('nan')

    def mm():
        return fused._LINEAR(a, b, None, 'none', [], '') if onednn else torch.mm(a, b)
    with torch.inference_mode():
        mm()
        best, end = float('inf'), time.perf_counter() + seconds
        while time.perf_counter() < end or best == float('inf'):
            t0 = time.perf_counter()
            mm()
            best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def gemm_rates(n: int = 2048) -> Dict[str, float]:
    """This machine's matmul limits in GFLOP/s: ``sgemm`` (fp32 ``torch.mm``, the reference
    of the "share" columns), ``sgemm_onednn`` (fp32 through oneDNN) and ``bf16``."""
    return dict(n=n, sgemm=gemm_rate(n), sgemm_onednn=gemm_rate(n, onednn=True),
                bf16=gemm_rate(n, torch.bfloat16))


def load_warning(per_core: float = 0.5) -> str:
    """A warning when the 1-minute load average exceeds ``per_core`` x cores ('' if not)."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover
        return ''
    cores = os.cpu_count() or 1
    if load <= per_core * cores:
        return ''
    return (f'WARNING: load average {load:.2f} on {cores} cores (> {per_core} per core): '
            'the machine is busy, timings are unreliable (compare same-run ratios only)')


def machine_description() -> Dict[str, Any]:
    import platform
    info = dict(torch=torch.__version__, python=platform.python_version(),
                threads=torch.get_num_threads(), nproc=os.cpu_count(),
                cpu=_cpu_name(), cuda=torch.cuda.is_available())
    from ..ops import native
    info['native'] = native.describe()      # the compiled CPU kernels of the deploy forms
    try:
        info['loadavg'] = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        info['gpu'] = torch.cuda.get_device_name(0)
    return info


def _cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    import platform
    return platform.processor() or platform.machine()
