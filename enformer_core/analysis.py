"""Instruments for judging a backbone: parameters & FLOPs, throughput/memory, cluster maps.

The command-line tools in ``tools/analysis`` and ``tools/visualization`` are thin wrappers
around this module, so everything here is usable from Python too::

    from enformer_core.analysis import load_model, complexity, benchmark_inference
    lm = load_model('enformer_s')                      # or a config file of any task
    info = complexity(lm, shape=(224, 224))            # params, FLOPs, per-stage table
    speed = benchmark_inference(lm.model, batch=32, shape=(224, 224))

*Parameters* are the true count; the EnFormer paper's "#params" is the re-parameterised
count divided by 2**20 (8,506,224 / 1,048,576 = 8.11 "M" for EnFormer-S).
*FLOPs* follow fvcore's convention through :class:`mmengine.analysis.FlopAnalyzer`: one
multiply-add is one FLOP; counted are convolutions, linear/addmm/mm/matmul/bmm/einsum, the
normalisations (batch/group/layer/instance norm, per element), adaptive average pooling and
up-sampling.  ``baddbmm``, softmax and element-wise ops are ignored unless
``count_extra=True`` adds handlers for them (see :data:`EXTRA_OP_RULES`).
"""
from __future__ import annotations

import contextlib
import copy
import gzip
import json
import os
import re
import statistics
import struct
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

#: default input size (H, W) of each task: classification 224², detection 1280x800
#: (W x H, mmdet's test scale), segmentation 512²
TASK_SHAPES: Dict[str, Tuple[int, int]] = {'classification': (224, 224),
                                           'detection': (800, 1280),
                                           'segmentation': (512, 512)}
SCOPE_TASKS = {'mmpretrain': 'classification', 'mmcls': 'classification',
               'mmdet': 'detection', 'mmseg': 'segmentation'}
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
PAPER_UNIT = 2 ** 20


# ======================================================================================
# Building a model from a config of any task, or from a create_model name
# ======================================================================================
@dataclass
class LoadedModel:
    """A model with what the tools need to know about it."""
    model: nn.Module
    name: str
    task: str = 'classification'
    config: Any = None
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    notes: List[str] = field(default_factory=list)

    @property
    def backbone(self) -> nn.Module:
        return getattr(self.model, 'backbone', self.model)

    @property
    def in_channels(self) -> int:
        return int(getattr(self.backbone, 'in_channels', 3))

    @property
    def default_shape(self) -> Tuple[int, int]:
        return TASK_SHAPES.get(self.task, (224, 224))


def is_config_path(spec: str) -> bool:
    return spec.endswith('.py') or os.sep in spec or os.path.isfile(spec)


def load_model(spec: str, checkpoint: Optional[str] = None, deploy: bool = False,
               device: str = 'cpu', num_classes: Optional[int] = None) -> LoadedModel:
    """Build ``spec`` (an OpenMMLab config file of any task or a ``create_model`` name).

    A config is built through its own scope's registry (``default_scope``); configs import
    ``enformer_core`` through ``custom_imports``.  ``checkpoint`` (a path, or ``None``/
    ``'none'`` for random init) is loaded weights-only; the published EnFormer layout is
    converted on the fly.  ``deploy`` calls ``reparameterize()``.  Returns the model in
    eval mode.
    """
    if is_config_path(spec):
        lm = _load_from_config(spec)
    else:
        from .models.factory import create_model, list_models
        try:
            kw = {} if num_classes is None else dict(num_classes=num_classes)
            model = create_model(spec, **kw)
        except ValueError as e:
            raise ValueError(f'{spec!r} is neither a config file nor a model name: {e}') from None
        lm = LoadedModel(model=model, name=spec)
    if checkpoint and str(checkpoint).lower() != 'none':
        lm.notes.append(load_weights(lm.model, checkpoint))
    if deploy:
        reparameterize(lm.model)
    lm.model.to(device).eval()
    return lm


def _load_from_config(path: str) -> LoadedModel:
    if not os.path.isfile(path):
        raise FileNotFoundError(f'config file {path!r} does not exist')
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    cfg = Config.fromfile(path)  # also runs custom_imports (enformer_core registers itself)
    import enformer_core  # noqa: F401  (registers the backbones even without custom_imports)
    if 'model' not in cfg:
        raise ValueError(f'config {path} has no "model" entry')
    scope = cfg.get('default_scope', None)
    if scope:
        try:
            init_default_scope(scope)
        except Exception as e:  # missing toolbox
            raise RuntimeError(f'config {path} needs the {scope!r} toolbox: {e}') from e
    task = SCOPE_TASKS.get(scope, 'classification')
    model_cfg = copy.deepcopy(cfg.model)
    # a Pretrained init_cfg would try to read weights: this tool loads them itself
    _strip_pretrained(model_cfg)
    model = MODELS.build(model_cfg)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    for pre in (cfg.model.get('data_preprocessor'), cfg.get('data_preprocessor')):
        if isinstance(pre, dict) and pre.get('mean') is not None:
            mean, std = tuple(pre['mean']), tuple(pre.get('std') or (1.0,) * len(pre['mean']))
            break
    name = os.path.splitext(os.path.basename(path))[0]
    return LoadedModel(model=model, name=name, task=task, config=cfg, mean=mean, std=std)


def _strip_pretrained(cfg) -> None:
    if isinstance(cfg, dict):
        init = cfg.get('init_cfg')
        if isinstance(init, dict) and init.get('type') == 'Pretrained':
            cfg['init_cfg'] = None
        for v in cfg.values():
            _strip_pretrained(v)
    elif isinstance(cfg, (list, tuple)):
        for v in cfg:
            _strip_pretrained(v)


def load_weights(model: nn.Module, checkpoint: str) -> str:
    """Load a checkpoint (ours, mmpretrain/mmdet/mmseg or published layout) weights-only.

    Returns a one-line report; raises :class:`CheckpointError` when nothing matches.
    """
    from .models.checkpoint import CheckpointError, load_state_dict_file, \
        maybe_convert_published
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint {checkpoint!r} does not exist')
    state = maybe_convert_published(load_state_dict_file(checkpoint))
    own = model.state_dict()
    if not any(k in own for k in state) and not any(k.startswith('backbone.') for k in own):
        # a bare backbone checkpoint loaded into a bare backbone model is fine; a bare
        # classifier state (``backbone.*``) into a bare backbone: strip the prefix
        state = {k[9:]: v for k, v in state.items() if k.startswith('backbone.')}
    if not any(k in own for k in state) and any(k.startswith('backbone.') for k in own):
        state = {'backbone.' + k: v for k, v in state.items()}
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fits:
        raise CheckpointError(f'no key of {checkpoint} fits the model (first checkpoint keys: '
                              f'{list(state)[:3]}, first model keys: {list(own)[:3]})')
    model.load_state_dict(fits, strict=False)
    missing = [k for k in own if k not in fits and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state if k not in fits]
    return (f'loaded {len(fits)} tensors from {checkpoint}; {len(missing)} missing '
            f'{missing[:3]}, {len(unexpected)} unused {unexpected[:3]}')


def has_deploy_form(model: nn.Module) -> bool:
    """Whether the backbone (or the model itself when it has none) can re-parameterise."""
    backbone = getattr(model, 'backbone', None)
    return hasattr(backbone if isinstance(backbone, nn.Module) else model, 'reparameterize')


def reparameterize(model: nn.Module) -> nn.Module:
    """Fold the model into its deploy form in place; clear error when it has none."""
    if not has_deploy_form(model):
        raise ValueError(f'{type(model).__name__} has no reparameterize() (no deploy form)')
    target = model if hasattr(model, 'reparameterize') else model.backbone
    target.reparameterize()
    return model


# ======================================================================================
# Parameters and FLOPs
# ======================================================================================
def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def param_summary(model: nn.Module) -> Dict[str, Any]:
    """True parameter count as built, after ``reparameterize()`` (if the model has one), and
    the paper convention (re-parameterised count / 2**20)."""
    n = count_params(model)
    fused = None
    if has_deploy_form(model):
        fused_model = reparameterize(copy.deepcopy(model))
        fused = count_params(fused_model)
    deployed = fused if fused is not None else n
    return dict(params=n, params_deploy=fused, params_paper_mi=deployed / PAPER_UNIT,
                params_m=n / 1e6)


class _TensorForward(nn.Module):
    """Adapts an OpenMMLab model so that ``forward(tensor)`` runs its whole graph."""

    def __init__(self, model: nn.Module, task: str, shape: Tuple[int, int]):
        super().__init__()
        self.model = model
        self.task = task
        self.shape = shape

    def forward(self, x: torch.Tensor):
        m = self.model
        if self.task == 'detection':
            from mmdet.structures import DetDataSample
            h, w = x.shape[-2:]
            meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                        batch_input_shape=(h, w), scale_factor=(1.0, 1.0))
            samples = [DetDataSample(metainfo=meta) for _ in range(x.shape[0])]
            return m._forward(x, samples)
        if hasattr(m, '_forward') and self.task == 'segmentation':
            return m._forward(x)
        try:
            return m(x, mode='tensor')
        except TypeError:
            return m(x)


def flop_target(lm: LoadedModel, target: str = 'auto') -> Tuple[nn.Module, str]:
    """The module whose FLOPs are counted: ``'full'`` model, ``'backbone'``, or ``'auto'``
    (full for classification and segmentation, backbone for detection)."""
    if target == 'auto':
        target = 'backbone' if lm.task == 'detection' else 'full'
    if target == 'backbone':
        return lm.backbone, 'backbone'
    if target != 'full':
        raise ValueError(f'unknown FLOP target {target!r}; use auto, full or backbone')
    m = lm.model
    if not hasattr(m, 'data_preprocessor'):  # plain PyTorch model (create_model)
        return m, 'full'
    return _TensorForward(m, lm.task, lm.default_shape), 'full'


def _numel(val) -> int:
    from mmengine.analysis.jit_handles import get_shape
    shape = get_shape(val)
    return int(np.prod(shape)) if shape else 0


def _baddbmm_flop(inputs, outputs) -> int:
    from mmengine.analysis.jit_handles import get_shape
    b, n, k = get_shape(inputs[1])
    m = get_shape(inputs[2])[-1]
    return b * n * k * m


def _elementwise_out(inputs, outputs) -> int:
    return _numel(outputs[0])


def _elementwise_in(inputs, outputs) -> int:
    return _numel(inputs[0])


#: handlers added by ``count_extra``: baddbmm as a bmm (multiply-adds); softmax,
#: element-wise arithmetic and activations one FLOP per output element; reductions
#: (norm, sum, mean) one FLOP per input element
EXTRA_OP_RULES: Dict[str, Any] = {
    'aten::baddbmm': _baddbmm_flop,
    'aten::softmax': _elementwise_out, 'aten::_softmax': _elementwise_out,
    'aten::sigmoid': _elementwise_out, 'aten::silu': _elementwise_out,
    'aten::gelu': _elementwise_out, 'aten::relu': _elementwise_out,
    'aten::add': _elementwise_out, 'aten::sub': _elementwise_out,
    'aten::mul': _elementwise_out, 'aten::div': _elementwise_out,
    'aten::exp': _elementwise_out, 'aten::clamp_min': _elementwise_out,
    'aten::linalg_vector_norm': _elementwise_in, 'aten::sum': _elementwise_in,
    'aten::mean': _elementwise_in,
}

COUNTED_OPS = ('conv', 'linear/addmm/mm/matmul/bmm/einsum (multiply-adds)',
               'batch/group/layer/instance norm (per element)', 'adaptive_avg_pool2d',
               'upsample (nearest/bilinear)')


def _breakdown_names(root: nn.Module, prefix: str) -> List[str]:
    """Module names for the per-stage table: children of ``root``, with ModuleLists
    (``stages``, ``layers``...) expanded one level."""
    names = []
    for name, child in root.named_children():
        full = f'{prefix}{name}'
        if isinstance(child, (nn.ModuleList, nn.Sequential)) and len(child) <= 8:
            names += [f'{full}.{i}' for i, _ in enumerate(child)]
        else:
            names.append(full)
    return names


def count_flops(module: nn.Module, inputs: torch.Tensor, count_extra: bool = False):
    """Run :class:`mmengine.analysis.FlopAnalyzer` quietly; returns the analyzer."""
    from mmengine.analysis import FlopAnalyzer
    fa = FlopAnalyzer(module, inputs)
    fa.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    fa.tracer_warnings('none')
    if count_extra:
        fa.set_op_handle(**EXTRA_OP_RULES)
    return fa


def complexity(lm: LoadedModel, shape: Optional[Tuple[int, int]] = None,
               target: str = 'auto', count_extra: bool = False) -> Dict[str, Any]:
    """Parameters, FLOPs (fvcore convention) and a per-stage table of ``lm`` at ``shape``."""
    shape = tuple(shape or lm.default_shape)
    module, target_name = flop_target(lm, target)
    module.eval()
    x = torch.randn(1, lm.in_channels, *shape, device=next(module.parameters()).device)
    with torch.no_grad():
        fa = count_flops(module, (x,), count_extra=False)
        total = fa.total()
        by_module = fa.by_module()
        by_op = dict(fa.by_operator())
        unsupported = dict(fa.unsupported_ops())
        extra_total, extra_by_op = None, {}
        if count_extra:
            fe = count_flops(module, (x,), count_extra=True)
            extra_total = fe.total()
            extra_by_op = {k: int(v) for k, v in fe.by_operator().items() if k not in by_op}
    # per-stage rows (relative to the counted module)
    inner = module.model if isinstance(module, _TensorForward) else module
    base = 'model.' if isinstance(module, _TensorForward) else ''
    rows = []
    backbone = getattr(inner, 'backbone', None)
    if backbone is None:
        rows = _breakdown_names(inner, base)
    else:
        for name, child in inner.named_children():
            if child is backbone:
                rows += _breakdown_names(child, f'{base}{name}.')
            elif count_params(child) or name != 'data_preprocessor':
                rows.append(f'{base}{name}')
    modules = dict(module.named_modules())
    table = []
    for r in rows:
        m = modules.get(r)
        if m is None:
            continue
        table.append(dict(module=r[len(base):], params=count_params(m),
                          flops=int(by_module.get(r, 0))))
    params = param_summary(module if not isinstance(module, _TensorForward) else inner)
    return dict(model=lm.name, task=lm.task, target=target_name, shape=list(shape),
                flops=int(total), gflops=total / 1e9,
                flops_with_extra=None if extra_total is None else int(extra_total),
                extra_by_operator=extra_by_op,
                by_operator={k: int(v) for k, v in by_op.items()},
                uncounted_ops=unsupported, stages=table, **params)


def format_complexity(info: Dict[str, Any]) -> str:
    """Readable report of :func:`complexity`."""
    h, w = info['shape']
    lines = [f"== {info['model']} ({info['task']}, {info['target']}) at {h}x{w} ==",
             f"parameters (true count, as trained) : {info['params']:,} "
             f"({info['params'] / 1e6:.3f} M)"]
    if info['params_deploy'] is not None:
        lines.append(f"parameters after reparameterize()  : {info['params_deploy']:,} "
                     f"({info['params_deploy'] / 1e6:.3f} M)")
    lines.append(f"EnFormer paper convention          : {info['params_paper_mi']:.2f} \"M\"  "
                 "(the paper's #params is the re-parameterised count / 2^20, "
                 "e.g. 8,506,224 / 1,048,576 = 8.11 for S)")
    lines.append(f"FLOPs (fvcore multiply-adds)       : {info['gflops']:.5f} G")
    if info['flops_with_extra'] is not None:
        extra = info['flops_with_extra']
        lines.append(f"FLOPs incl. baddbmm/softmax/elt-wise: {extra / 1e9:.5f} G "
                     f"(+{100 * (extra / info['flops'] - 1):.2f} %: " + ', '.join(
                         f"{k} +{100 * v / info['flops']:.2f}%" for k, v in sorted(
                             info['extra_by_operator'].items(), key=lambda kv: -kv[1])[:6])
                     + ')')
    lines.append('counted ops: ' + ', '.join(
        f"{k} {v / 1e9:.4f}G" for k, v in sorted(info['by_operator'].items(),
                                                 key=lambda kv: -kv[1])))
    if info['uncounted_ops']:
        lines.append('not counted (fvcore convention; --count-extra adds them): '
                     + ', '.join(f'{k.replace("aten::", "")}x{v}'
                                 for k, v in sorted(info['uncounted_ops'].items())))
    lines.append('')
    lines.append(f"{'module':<28}{'params':>14}{'GFLOPs':>12}{'share':>9}")
    for row in info['stages']:
        share = 100 * row['flops'] / max(info['flops'], 1)
        lines.append(f"{row['module']:<28}{row['params']:>14,}{row['flops'] / 1e9:>12.5f}"
                     f"{share:>8.1f}%")
    return '\n'.join(lines)


# ======================================================================================
# Throughput, training step time and memory
# ======================================================================================
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


def machine_description() -> Dict[str, Any]:
    import platform
    info = dict(torch=torch.__version__, python=platform.python_version(),
                threads=torch.get_num_threads(), nproc=os.cpu_count(),
                cpu=_cpu_name(), cuda=torch.cuda.is_available())
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


# ======================================================================================
# Cluster-assignment maps
# ======================================================================================
_CLUSTER_NAME = re.compile(r'(?:^|\.)stages\.(\d+)\.blocks\.(\d+)\.(?:mixer|cluster)\.'
                           r'(?:clusterings\.(\d+)|consensus)$')


@dataclass
class AssignmentRecord:
    """The assignment of one clustering module for one image and one head."""
    name: str                     # module name
    stage: int
    block: int
    kind: str                     # 'partitional' / 'fuzzy' / ... / 'consensus'
    index: int                    # base-clustering index (-1 for the consensus)
    num_centres: int
    centre_grids: List[Tuple[int, int]]   # one (h, w) per base clustering of the centres
    points_grid: Tuple[int, int]  # the agents grid or the stage's pixel grid
    weights: torch.Tensor         # (M, h, w) memberships

    @property
    def title(self) -> str:
        if self.kind == 'consensus':
            return f'consensus (M={self.num_centres})'
        gh, gw = self.centre_grids[0]
        return f'{self.kind} {gh}x{gw}'

    def labels_and_confidence(self, size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
        """Arg-max centre per pixel and its membership, upsampled (nearest) to ``size``."""
        w = F.interpolate(self.weights[None].float(), size=size, mode='nearest')[0]
        conf, labels = w.max(0)
        return labels.numpy().astype(np.int64), conf.numpy()


def _mixer_of(model: nn.Module, name: str) -> nn.Module:
    parent = name.rsplit('.clusterings.', 1)[0] if '.clusterings.' in name \
        else name.rsplit('.', 1)[0]
    return dict(model.named_modules())[parent]


def collect_assignments(backbone: nn.Module, image: torch.Tensor,
                        stages: Optional[Sequence[int]] = None,
                        blocks: Optional[Sequence[int]] = ('last',), head: int = 0
                        ) -> List[AssignmentRecord]:
    """Run ``backbone`` (eval, no grad) on ``image`` (1, C, H, W) and return the assignment of
    every base clustering and of the consensus of the chosen stages/blocks.

    ``blocks`` holds block indices (negative from the end) and/or ``'last'``/``'all'``;
    ``head`` picks the head (heads are folded into the batch: b = B*heads).
    """
    from .utils.inspect import record_assignments
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f'expected one image of shape (1, C, H, W), got {tuple(image.shape)}')
    named = {id(m): n for n, m in backbone.named_modules()}
    shapes: Dict[int, Tuple[int, int]] = {}
    hooks = []
    all_mods = [m for m in backbone.modules()
                if hasattr(m, 'record') and hasattr(m, 'last_assignment')]
    if not all_mods:
        raise ValueError(f'{type(backbone).__name__} has no clustering module that records '
                         'assignments (only EnFormer-style mixers do)')
    mixers = {}
    for m in all_mods:
        mixer = _mixer_of(backbone, named[id(m)])
        mixers[id(mixer)] = mixer
    for mixer in mixers.values():
        hooks.append(mixer.register_forward_pre_hook(
            lambda mod, args: shapes.__setitem__(id(mod), tuple(args[0].shape[1:3]))))
    # which (stage, block) pairs are wanted
    depth: Dict[int, int] = {}
    for m in all_mods:
        mt = _CLUSTER_NAME.search(named[id(m)])
        if mt:
            s, b = int(mt.group(1)), int(mt.group(2))
            depth[s] = max(depth.get(s, 0), b + 1)
    want_stages = sorted(depth) if stages is None else list(stages)
    for s in want_stages:
        if s not in depth:
            raise ValueError(f'stage {s} does not exist (stages: {sorted(depth)})')
    try:
        was_training = backbone.training
        backbone.eval()
        with record_assignments(backbone) as mods, torch.no_grad():
            backbone(image)
        backbone.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    records = []
    for m in mods:
        name = named[id(m)]
        mt = _CLUSTER_NAME.search(name)
        if not mt or m.last_assignment is None:
            continue
        s, b = int(mt.group(1)), int(mt.group(2))
        if s not in want_stages or not _block_wanted(b, depth[s], blocks):
            continue
        mixer = _mixer_of(backbone, name)
        pts = shapes[id(mixer)]  # the map (H, W) the mixer saw; its agent grid if it pooled
        if hasattr(mixer, 'agent_grid'):
            pts = mixer.agent_grid(*pts) or pts
        elif getattr(mixer, 'agents', None):
            pts = tuple(mixer.agents)
        a = m.last_assignment  # (B*heads, M, N')
        heads = a.shape[0] // image.shape[0]
        if not 0 <= head < heads:
            raise ValueError(f'head {head} out of range: {name} has {heads} heads')
        weights = a[head].reshape(a.shape[1], *pts).cpu()
        if mt.group(3) is not None:
            kind, idx, grids = m.rule, int(mt.group(3)), [tuple(m.grid)]
        else:
            kind, idx = 'consensus', -1
            grids = [tuple(c.grid) for c in getattr(mixer, 'clusterings', [])]
        records.append(AssignmentRecord(name=name, stage=s, block=b, kind=kind, index=idx,
                                        num_centres=a.shape[1], centre_grids=grids,
                                        points_grid=pts, weights=weights))
        m.last_assignment = None
    return records


def _block_wanted(b: int, n: int, blocks) -> bool:
    if blocks is None:
        return True
    for spec in blocks:
        if spec == 'all':
            return True
        if spec == 'last' and b == n - 1:
            return True
        if isinstance(spec, int) or (isinstance(spec, str) and spec.lstrip('-').isdigit()):
            i = int(spec)
            if (i if i >= 0 else n + i) == b:
                return True
    return False


def centre_palette(grids: Sequence[Tuple[int, int]]) -> np.ndarray:
    """One RGB colour per centre, (M, 3) in [0, 1].  Centre ``m`` of a base clustering is
    initialised from cell ``(m // w, m % w)`` of its grid, so the colour encodes that cell:
    hue from the column, lightness from the row; the K base clusterings of a consensus
    get disjoint hue ranges."""
    import colorsys
    cols = []
    k = len(grids)
    for gi, (gh, gw) in enumerate(grids):
        for r in range(gh):
            for c in range(gw):
                hue = (gi + (c + 0.5) / gw * 0.9) / k if k > 1 else (c + 0.5) / gw * 0.9
                light = 0.3 + 0.45 * (r + 0.5) / gh
                cols.append(colorsys.hls_to_rgb(hue % 1.0, light, 0.85))
    return np.asarray(cols, dtype=np.float32)


def overlay(image: np.ndarray, labels: np.ndarray, conf: np.ndarray,
            palette: np.ndarray, soft: bool) -> np.ndarray:
    """Blend the centre colours over a grey copy of ``image`` (H, W, 3 floats in [0, 1]);
    opacity follows the confidence for soft assignments."""
    grey = image.mean(-1, keepdims=True).repeat(3, -1)
    colour = palette[labels % len(palette)]
    if soft:
        m = len(palette)
        c = np.clip((conf - 1.0 / m) / max(1 - 1.0 / m, 1e-6), 0, 1) if m > 1 else conf
        alpha = (0.35 + 0.6 * np.sqrt(c))[..., None]
    else:
        alpha = np.full(labels.shape + (1,), 0.8, dtype=np.float32)
    return np.clip((1 - alpha) * grey * 0.9 + alpha * colour, 0, 1)


def _legend_image(grids: Sequence[Tuple[int, int]], palette: np.ndarray) -> np.ndarray:
    """The centre grids side by side, each cell in its centre's colour (the legend)."""
    hmax = max(g[0] for g in grids)
    parts, off = [], 0
    for gh, gw in grids:
        cell = np.ones((hmax, gw, 3), dtype=np.float32)
        cell[:gh] = palette[off:off + gh * gw].reshape(gh, gw, 3)
        off += gh * gw
        parts += [cell, np.ones((hmax, 1, 3), dtype=np.float32)]
    return np.concatenate(parts[:-1], axis=1)


def render_assignment_grid(images: Sequence[np.ndarray],
                           records: Sequence[Sequence[AssignmentRecord]], out: str,
                           title: str = '', dpi: int = 110) -> Dict[str, Any]:
    """Draw one row per (image, stage, block): the image, then each base clustering and
    the consensus overlaid on it, with the centre-grid legend in each panel's corner.

    ``images``: (H, W, 3) floats in [0, 1]; ``records[i]``: the records of image i.
    Returns the label maps per panel (``{(img, name): labels}``) for inspection.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows = []
    for i, recs in enumerate(records):
        keys = []
        for r in recs:
            if (r.stage, r.block) not in keys:
                keys.append((r.stage, r.block))
        for key in keys:
            rows.append((i, key, [r for r in recs if (r.stage, r.block) == key]))
    if not rows:
        raise ValueError('nothing to draw: no assignment was recorded for the chosen '
                         'stages/blocks')
    ncols = 1 + max(len(r[2]) for r in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.6 * ncols, 2.7 * len(rows) + 0.6),
                             squeeze=False)
    maps = {}
    for ri, (i, (s, b), recs) in enumerate(rows):
        img = images[i]
        size = img.shape[:2]
        axes[ri, 0].imshow(img)
        axes[ri, 0].set_title(f'image {i}', fontsize=8)
        axes[ri, 0].set_ylabel(f'stage {s}, block {b}', fontsize=8)
        for ci, rec in enumerate(recs, start=1):
            labels, conf = rec.labels_and_confidence(size)
            maps[(i, rec.name)] = labels
            palette = centre_palette(rec.centre_grids) \
                if sum(g[0] * g[1] for g in rec.centre_grids) == rec.num_centres \
                else centre_palette([(1, rec.num_centres)])
            ax = axes[ri, ci]
            ax.imshow(overlay(img, labels, conf, palette, soft=rec.kind != 'partitional'))
            used = len(np.unique(labels))
            ah, aw = rec.points_grid
            ax.set_title(f'{rec.title}\n{used} centres used, points {ah}x{aw}', fontsize=7)
            inset = ax.inset_axes([0.68, 0.68, 0.3, 0.3])
            inset.imshow(_legend_image(rec.centre_grids, palette)
                         if rec.kind == 'consensus' or len(rec.centre_grids) == 1
                         else palette[None], interpolation='nearest')
            inset.set_xticks([])
            inset.set_yticks([])
        for ax in axes[ri]:
            ax.set_xticks([])
            ax.set_yticks([])
        for ci in range(len(recs) + 1, ncols):
            axes[ri, ci].axis('off')
    fig.suptitle((title + '\n' if title else '') +
                 'colour = arg-max centre (inset: centre grid, each cell in the colour of the '
                 'centre initialised there); opacity = membership of that centre '
                 '(hard partitional: opaque)', fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return maps


# ======================================================================================
# Images
# ======================================================================================
FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'


def read_idx_image(path: str, index: int) -> np.ndarray:
    """One image of an IDX (MNIST-format, optionally gzipped) file as (H, W) uint8."""
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
        magic, n = struct.unpack('>II', f.read(8))
        if magic != 2051:
            raise ValueError(f'{path} is not an IDX image file (magic {magic})')
        h, w = struct.unpack('>II', f.read(8))
        if not 0 <= index < n:
            raise ValueError(f'image index {index} out of range: {path} holds {n} images')
        f.seek(16 + index * h * w)
        return np.frombuffer(f.read(h * w), dtype=np.uint8).reshape(h, w)


def load_image(spec: str) -> np.ndarray:
    """An image file, or ``fashion-mnist:IDX`` (test split of the Debian dataset package;
    ``fashion-mnist-train:IDX`` for the training split), as (H, W, 3) uint8 RGB."""
    m = re.fullmatch(r'fashion-mnist(-train)?:(\d+)', spec)
    if m:
        split = 'train' if m.group(1) else 't10k'
        path = os.path.join(os.environ.get('FASHION_MNIST_DIR', FASHION_MNIST_DIR),
                            f'{split}-images-idx3-ubyte.gz')
        if not os.path.isfile(path):
            raise FileNotFoundError(f'{path} not found (apt-get install dataset-fashion-mnist '
                                    'or set FASHION_MNIST_DIR)')
        return np.repeat(read_idx_image(path, int(m.group(2)))[..., None], 3, axis=-1)
    if not os.path.isfile(spec):
        raise FileNotFoundError(f'image {spec!r} does not exist')
    from PIL import Image
    with Image.open(spec) as im:
        return np.asarray(im.convert('RGB'))


def prepare_image(rgb: np.ndarray, size: Tuple[int, int], mean: Sequence[float],
                  std: Sequence[float], in_channels: int = 3
                  ) -> Tuple[torch.Tensor, np.ndarray]:
    """Resize (bilinear) to ``size`` and normalise; returns the (1, C, H, W) tensor and the
    resized image as floats in [0, 1] for drawing."""
    t = torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=tuple(size), mode='bilinear', align_corners=False,
                      antialias=True).clamp(0, 255)
    shown = (t[0].permute(1, 2, 0) / 255.0).numpy()
    if in_channels == 1:
        t = t.mean(1, keepdim=True)
    elif in_channels != 3:
        raise ValueError(f'cannot feed an RGB image to a model with {in_channels} channels')
    mean_t = torch.tensor(mean[:in_channels] if len(mean) >= in_channels else mean * in_channels,
                          dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std[:in_channels] if len(std) >= in_channels else std * in_channels,
                         dtype=torch.float32).view(1, -1, 1, 1)
    return (t - mean_t) / std_t, shown


def dense_size(h: int, w: int, max_side: int = 640, multiple: int = 32) -> Tuple[int, int]:
    """Keep the aspect ratio, cap the longer side, round both sides to ``multiple``."""
    scale = min(1.0, max_side / max(h, w))
    return (max(multiple, int(round(h * scale / multiple)) * multiple),
            max(multiple, int(round(w * scale / multiple)) * multiple))


# ======================================================================================
# Checkpoint conversion (published EnFormer layout <-> ours), used by tools/model_converters
# ======================================================================================
_BACKBONE_KEY = re.compile(r'^(backbone\.)?(stem|stages|post_norm\d|classifier_pre_norm)\.')


def convert_state(state: Dict[str, torch.Tensor], direction: str, dense: bool = False,
                  backbone_only: bool = False) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Convert a whole checkpoint's state dict with
    :func:`enformer_core.models.checkpoint.convert_checkpoint`.

    ``direction``: ``'published_to_ours'`` or ``'ours_to_published'``.
    Classifier (default): every key must match a rule (``backbone.*``/``head.fc.*`` on our
    side, ``stem.``/``stages.``/``classifier_pre_norm``/``head`` on the published side).
    ``dense``: a detector/segmentor or bare dense backbone: the backbone keys are converted
    (kept below ``backbone.`` when the input had that prefix or when converting to ours),
    every other key (neck, heads) passes through unchanged.  ``backbone_only`` drops the
    non-backbone keys and writes a bare backbone (no ``backbone.`` prefix).
    Returns the converted state and a report (converted / passed-through / unmatched keys).
    """
    from .models.checkpoint import convert_checkpoint
    if direction not in ('published_to_ours', 'ours_to_published'):
        raise ValueError(f'unknown direction {direction!r}')
    report: Dict[str, Any] = dict(direction=direction, dense=dense, passed_through=[],
                                  unmatched=[], dropped=[])
    if not (dense or backbone_only):
        out = convert_checkpoint(state, direction, classifier=True, strict=False)
        # the input keys that produced no output (dropped by the non-strict conversion)
        report['unmatched'] = [k for k, v in state.items() if not convert_checkpoint(
            {k: v}, direction, classifier=True, strict=False)]
        report['converted'] = len(out)
        return out, report
    bb = {k: v for k, v in state.items() if _BACKBONE_KEY.match(k)}
    rest = {k: v for k, v in state.items() if k not in bb}
    if not bb:
        raise ValueError('no backbone key found (expected stem.*, stages.*, post_norm*, '
                         'optionally below backbone.)')
    had_prefix = any(k.startswith('backbone.') for k in bb)
    if direction == 'published_to_ours':
        conv = convert_checkpoint({k[9:] if k.startswith('backbone.') else k: v
                                   for k, v in bb.items()}, direction, classifier=True,
                                  strict=False)
        out = OrderedDict((k[9:] if backbone_only else k, v) for k, v in conv.items())
    else:
        bare = {k[9:] if k.startswith('backbone.') else k: v for k, v in bb.items()}
        conv = convert_checkpoint(bare, direction, classifier=False, strict=False)
        prefix = 'backbone.' if had_prefix and not backbone_only else ''
        out = OrderedDict((prefix + k, v) for k, v in conv.items())
    report['unmatched'] = [] if len(conv) == len(bb) else sorted(
        k for k in bb if not convert_checkpoint(
            {k[9:] if k.startswith('backbone.') else k: bb[k]}, direction,
            classifier=direction == 'published_to_ours', strict=False))
    if backbone_only:
        report['dropped'] = list(rest)
    else:
        out.update(rest)
        report['passed_through'] = list(rest)
    report['converted'] = len(conv)
    return out, report


def convert_file(src: str, dst: str, direction: str, dense: bool = False,
                 backbone_only: bool = False, strict: bool = False,
                 bare: bool = False) -> Dict[str, Any]:
    """Read ``src`` weights-only, convert, write ``dst`` as an mmengine-style checkpoint
    ``{'state_dict': ..., 'meta': {...}}`` (``bare``: the state dict alone)."""
    from .models.checkpoint import CheckpointError, load_state_dict_file
    if not os.path.isfile(src):
        raise FileNotFoundError(f'checkpoint {src!r} does not exist')
    state = load_state_dict_file(src)
    out, report = convert_state(state, direction, dense, backbone_only)
    if strict and report['unmatched']:
        raise CheckpointError(f"{len(report['unmatched'])} keys of {src} match no rule: "
                              f"{report['unmatched'][:10]}")
    if not out:
        raise CheckpointError(f'nothing of {src} could be converted ({direction})')
    fused = not any('dwconv.bn' in k or 'ffn_layers.0.bn' in k for k in out)
    meta = dict(converted_from=os.path.basename(src), direction=direction,
                layout=('published EnFormer' if direction == 'ours_to_published'
                        else 'enformer_core / OpenMMLab (backbone.*, head.fc.*)'),
                reparameterized=fused, unmatched=report['unmatched'])
    os.makedirs(os.path.dirname(os.path.abspath(dst)) or '.', exist_ok=True)
    torch.save(dict(out) if bare else {'state_dict': dict(out), 'meta': meta}, dst)
    report.update(meta)
    report['num_keys'] = len(out)
    return report


def format_conversion_report(report: Dict[str, Any], src: str, dst: str) -> str:
    lines = [f"{src} -> {dst} ({report['direction']}): {report['converted']} keys converted, "
             f"{report['num_keys']} written"
             + (' [re-parameterised layout]' if report.get('reparameterized') else '')]
    for key in ('passed_through', 'dropped', 'unmatched'):
        items = report.get(key) or []
        if items:
            lines.append(f'  {key.replace("_", " ")} ({len(items)}): ' + ', '.join(items[:8])
                         + (' ...' if len(items) > 8 else ''))
    if report.get('unmatched') and not report.get('dense'):
        lines.append('  (a detector/segmentor checkpoint? use --dense or --backbone-only)')
    return '\n'.join(lines)
