"""Exporting the models: ONNX with a dynamic batch and image size, and ``torch.jit.trace``.

Four things in the eager models tie a recorded graph to the size it was recorded at, or to
operators ONNX lacks.  :func:`export_mode` swaps each for a size-generic formulation with the
same values, for the duration of an export or trace only (the models are not changed):

1. ``CoordinateGrid`` caches the two coordinate channels per input size, so a trace keeps
   the traced size's grid as a constant (``torch.jit.trace`` at 64x64 then fails at 96x128
   with a size mismatch in ``cat``).  In export mode the grid is computed inside the graph
   from cumulative sums of ones (same values).
2. ``pool_tokens`` (EnFormer's centre and agent pooling) skips the pooling when a map already
   has the grid's size, a Python branch that a trace freezes (at 64x64 the 4x4 stage-3 map *is*
   the 4x4 centre grid).  In export mode it always pools to a fixed grid, and "every pixel"
   (stages without agents) is a flatten whatever the size.
3. ``F.adaptive_avg_pool2d`` to a fixed grid has an input-dependent kernel and stride, which
   ONNX's ``AveragePool`` cannot express (the TorchScript exporter stops with "input size not
   accessible").  In export mode it is two matmuls with pooling matrices built in the graph
   from the input size, with PyTorch's windows ``floor(i*H/h) .. ceil((i+1)*H/h)``.
4. The inference fast paths of ``enformer_core.ops.fused`` (oneDNN fused linears, cached
   folded weights) are CPU kernels with no ONNX or TorchScript form: export mode runs the
   plain modules.

What stays size-specific is written in ``docs/deployment.md`` (``clamp_agents=True``, used
by the demo configs, picks its agent grid with ``min(grid, map size)`` in Python).
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models import clustering as _clustering
from .models.backbone import ClusterBackbone
from .ops import fused as _fused


class ExportError(RuntimeError):
    """An export that cannot give what was asked (the message says what to do instead)."""


# ----------------------------------------------------------------- size-generic pieces
def _positions(ref: torch.Tensor) -> torch.Tensor:
    """``0 .. n-1`` (float32) for a 1-D ``ref`` of length ``n``, computed in the graph."""
    return torch.ones_like(ref, dtype=torch.float32).cumsum(0) - 1


def pooling_matrix(ref: torch.Tensor, out: int) -> torch.Tensor:
    """``(out, n)`` averaging weights of adaptive pooling from ``n = len(ref)`` to ``out``."""
    pos = _positions(ref)
    n = pos[-1:] + 1
    i = torch.arange(out, dtype=torch.float32, device=ref.device).unsqueeze(1)
    start = torch.floor(i * n / out)
    end = torch.ceil((i + 1) * n / out)
    inside = ((pos >= start) & (pos < end)).to(torch.float32)
    return inside / inside.sum(1, keepdim=True)


def adaptive_avg_pool2d(x: torch.Tensor, output_size) -> torch.Tensor:
    """``F.adaptive_avg_pool2d`` of ``(B, C, H, W)`` (or ``(C, H, W)``) as two matmuls."""
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    oh, ow = output_size
    ref_h, ref_w = x.select(-1, 0), x.select(-2, 0)
    while ref_h.dim() > 1:
        ref_h, ref_w = ref_h[0], ref_w[0]
    ph = pooling_matrix(ref_h, oh if oh else x.shape[-2])
    pw = pooling_matrix(ref_w, ow if ow else x.shape[-1])
    return torch.matmul(torch.matmul(ph.to(x.dtype), x), pw.t().to(x.dtype))


class _GraphCoordinates:
    """``CoordinateGrid`` computed inside the graph (no per-size cache)."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, x: torch.Tensor, channels_last: bool = False, **_) -> torch.Tensor:
        ones = torch.ones_like(x[:, :1], dtype=torch.float32)
        axes = []
        for dim in (2, 3):
            i = ones.cumsum(dim) - 1
            denom = i.amax(dim=dim, keepdim=True).clamp_min(1)  # n - 1, at least 1
            axes.append((i - 0.5) / denom if self.mode == 'enformer' else i / denom - 0.5)
        out = torch.cat([x, torch.cat(axes, 1).to(x.dtype)], 1)
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def _make_pool_tokens(fixed: Sequence[tuple]):
    """``pool_tokens`` without the identity shortcut; "every pixel" by the call, not the size.

    ``fixed`` holds the grid tuples of the model's clusterings and agents (the objects the
    mixer passes); any other size equal to the map's own is the "every pixel" call.
    """
    fixed_ids = {id(g) for g in fixed}

    def pool_tokens(x: torch.Tensor, size) -> torch.Tensor:
        if id(size) not in fixed_ids and tuple(size) == tuple(x.shape[1:3]):
            return x.flatten(1, 2)
        y = adaptive_avg_pool2d(x.permute(0, 3, 1, 2), tuple(size))
        return y.permute(0, 2, 3, 1).flatten(1, 2)
    return pool_tokens


@contextlib.contextmanager
def export_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in its size-generic, export-friendly form inside the ``with`` block."""
    backbones = [m for m in model.modules() if isinstance(m, ClusterBackbone)]
    fixed: List[tuple] = []
    for m in model.modules():
        for attr in ('grid', 'agents'):
            value = getattr(m, attr, None)
            if isinstance(value, tuple):
                fixed.append(value)
    saved_coords = [b.coords for b in backbones]
    saved = [(_clustering, 'pool_tokens', _clustering.pool_tokens),
             (F, 'adaptive_avg_pool2d', F.adaptive_avg_pool2d)]
    if hasattr(_fused, 'inference'):
        saved.append((_fused, 'inference', _fused.inference))
    try:
        for b in backbones:
            b.coords = _GraphCoordinates(getattr(b.coords, 'mode', 'enformer'))
        _clustering.pool_tokens = _make_pool_tokens(fixed)
        F.adaptive_avg_pool2d = adaptive_avg_pool2d
        if len(saved) > 2:
            _fused.inference = lambda x: False
        yield model
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
        for b, coords in zip(backbones, saved_coords):
            b.coords = coords


# ----------------------------------------------------------------- what is exported
class DenseOutputs(nn.Module):
    """A dense backbone (or a detector's / segmentor's ``backbone``) as a graph with one
    output per requested stage."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(self.backbone(x))


class ClassifierLogits(nn.Module):
    """An mmpretrain ``ImageClassifier`` as ``normalised image -> logits`` (the data
    preprocessor's mean/std are not in the graph)."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.head(self.classifier.extract_feat(x))


def exportable(model: nn.Module) -> Tuple[nn.Module, List[str]]:
    """``(module, output names)``: a classifier (ours or an mmpretrain ``ImageClassifier``)
    gives ``logits``; a backbone, or a detector's / segmentor's backbone, one output per
    stage (``stage{i}``; ``pooled{i}`` for a classification backbone)."""
    if isinstance(model, ClassifierLogits):
        return model, ['logits']
    if isinstance(model, DenseOutputs):
        return model, _stage_names(model.backbone)
    if hasattr(model, 'head') and hasattr(model, 'forward_features'):
        return model, ['logits']
    if hasattr(model, 'extract_feat') and hasattr(getattr(model, 'head', None), 'fc'):
        return ClassifierLogits(model), ['logits']
    backbone = model if isinstance(model, ClusterBackbone) else getattr(model, 'backbone', None)
    if not isinstance(backbone, ClusterBackbone):
        raise ExportError(f'{type(model).__name__} is neither a create_model classifier nor '
                          f'a model with an enformer_core backbone')
    return DenseOutputs(backbone), _stage_names(backbone)


def _stage_names(backbone: nn.Module) -> List[str]:
    kind = 'pooled' if backbone.gap_before_final_norm else 'stage'
    return [f'{kind}{i}' for i in sorted(set(backbone.out_indices))]


def export_onnx(model: nn.Module, path: str, input_shape: Sequence[int],
                dynamic_batch: bool = True, dynamic_size: bool = True,
                opset: int = 17) -> List[str]:
    """Export ``model`` (eval mode) to ONNX at ``path``; returns the output names.

    ``input_shape`` is ``(B, C, H, W)`` of the example input.  With ``dynamic_size`` the
    height and width are free (any size the backbone accepts, at least 32), with
    ``dynamic_batch`` the batch.  The TorchScript-based exporter (``dynamo=False``) is used:
    ``torch.export`` took ~2 minutes for EnFormer-S and its graph failed at another image
    size (``docs/deployment.md``).
    """
    module, names = exportable(model)
    module.eval()
    x = torch.randn(*input_shape)
    axes = {}
    if dynamic_batch:
        axes[0] = 'batch'
    if dynamic_size:
        axes.update({2: 'height', 3: 'width'})
    out_axes = {n: ({0: 'batch'} if dynamic_batch else {}) for n in names}
    if dynamic_size and names[0].startswith('stage'):
        for n in names:
            out_axes[n].update({2: f'{n}_height', 3: f'{n}_width'})
    try:
        import onnx  # noqa: F401  (the TorchScript exporter writes through it)
    except ImportError:
        raise ImportError("ONNX export needs onnx: pip install 'enformer_core[export]'") from None
    os.makedirs(os.path.dirname(os.path.abspath(path)) or '.', exist_ok=True)
    with export_mode(module), torch.no_grad():
        try:
            torch.onnx.export(module, (x,), path, input_names=['input'], output_names=names,
                              opset_version=opset, dynamo=False,
                              dynamic_axes={'input': axes, **out_axes})
        except Exception as exc:
            raise ExportError(f'ONNX export of {type(model).__name__} failed ({type(exc).__name__}'
                              f': {str(exc).splitlines()[0][:300]}); try a fixed image size '
                              f'(dynamic_size=False)') from exc
    return names


def onnx_max_abs_diff(path: str, model: nn.Module, inputs: Sequence[torch.Tensor]
                      ) -> List[float]:
    """Largest ``|onnxruntime - PyTorch|`` over the outputs, for each input tensor."""
    import numpy as np
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("checking an ONNX file needs onnxruntime: pip install "
                          "'enformer_core[export]'") from None
    module, _ = exportable(model)
    sess = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    out = []
    for x in inputs:
        with torch.no_grad():
            ref = module(x)
        ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        out.append(max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, ref)))
    return out


def trace(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of ``model`` in export mode: the traced module runs at any batch
    and image size (``check_trace`` off: the check would re-run the eager model)."""
    module, _ = exportable(model)
    module.eval()
    with export_mode(module), torch.no_grad():
        return torch.jit.trace(module, (example,), check_trace=False)
