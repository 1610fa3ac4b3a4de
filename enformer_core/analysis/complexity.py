"""Parameters and FLOPs of any model the tools load.

*Parameters* are the true count; the EnFormer paper's "#params" is the re-parameterised
count divided by 2**20 (8,506,224 / 1,048,576 = 8.11 "M" for EnFormer-S).
*FLOPs* follow fvcore's convention through :class:`mmengine.analysis.FlopAnalyzer`: one
multiply-add is one FLOP; counted are convolutions, linear/addmm/mm/matmul/bmm/einsum, the
normalisations (batch/group/layer/instance norm, per element), adaptive average pooling and
up-sampling.  ``baddbmm``, softmax and element-wise ops are ignored unless
``count_extra=True`` adds handlers for them (see :data:`EXTRA_OP_RULES`).
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from .loading import LoadedModel, has_deploy_form, reparameterize

PAPER_UNIT = 2 ** 20


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as BatchNorm running stats excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


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
