"""Fast paths that compute the same values as the plain modules (``docs/benchmarks.md``).

* :func:`linear`: ``act(x W^T + b) [+ residual]`` as one oneDNN call on CPU when no autograd
  graph is recorded (fp32 and bf16).  PyTorch's fp32 ``F.linear`` goes to MKL's sgemm, which
  runs its AVX2 code on AMD processors and is slow for the narrow matrices of a vision
  backbone (K = 40..320); oneDNN uses AVX-512 there and fuses the SiLU or the residual add
  into the matmul.  Same maths; only the summation order differs (~1e-7 relative).
* :class:`LinearSiLULinear`: the FFN's ``fc2(silu(fc1(x)))`` as one autograd Function that
  saves ``x`` and ``fc1(x)`` only (the SiLU output is recomputed in backward): 4C fewer
  floats per token saved than the three modules, and oneDNN forward matmuls.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from . import native
from .quantized import Int8Weight, int8_linear, int8_mlp, quantize_u8
from .quantized_conv import (Int8Conv2d, conv_chain, conv_mlp_u8, int8_conv2d_u8,
                             int8_conv_mlp)

_LINEAR = getattr(getattr(torch.ops, 'mkldnn', None), '_linear_pointwise', None)
HAS_ONEDNN_LINEAR = _LINEAR is not None and torch.backends.mkldnn.is_available()
_ACTS = {None: 'none', 'silu': 'swish'}
_FAST_DTYPES = (torch.float32, torch.bfloat16)
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def tracing() -> bool:
    """TorchScript tracing (FLOP counting, export) or ``torch.compile``: the plain ops, which
    the counters, exporters and compilers know."""
    return (torch.jit.is_tracing() or torch.jit.is_scripting()
            or torch.compiler.is_compiling())


def autocast(x: torch.Tensor) -> bool:
    """Autocast is on for ``x``'s device: the plain ops, which autocast knows how to cast
    (the custom Functions and oneDNN calls here would mix dtypes)."""
    return torch.is_autocast_enabled(x.device.type)


def custom_grad(x: torch.Tensor) -> bool:
    """Whether the memory-lean autograd Functions apply: autograd records, nothing is
    traced and autocast is off."""
    return torch.is_grad_enabled() and not tracing() and not autocast(x)


def inference(x: torch.Tensor) -> bool:
    """True when no autograd graph is being recorded (``no_grad`` / ``inference_mode``) and
    nothing is being traced: the fused inference paths may run."""
    return not torch.is_grad_enabled() and not tracing()


def _onednn_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    # plain tensors only: tensor subclasses keep F.linear (their own dispatch)
    return (HAS_ONEDNN_LINEAR and x.device.type == 'cpu' and x.dtype in _FAST_DTYPES
            and not autocast(x)
            and type(weight) in _PLAIN and type(x) in _PLAIN and weight.dtype == x.dtype
            and x.shape[-1] == weight.shape[1] > 0)  # (oneDNN rejects empty reductions)


def layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm, act: Optional[str] = None,
               out_qparams: Optional[Tuple[float, int]] = None) -> torch.Tensor:
    """``act(norm(x))`` (``act``: ``None`` or ``'silu'``), or its uint8 quantisation at
    ``out_qparams = (s, z)`` (an int8 layer's static input).  In float32 CPU inference the
    compiled kernel (:mod:`~enformer_core.ops.native`) does all of it in one pass;
    bfloat16 rows whose length is not a multiple of 16 (EnFormer-S's 20 and 40 channels) are
    normalised in float32: PyTorch's bf16 kernel is up to 3x slower there."""
    if len(norm.normalized_shape) == 1 and inference(x) and native.supports(x):
        return native.layer_norm(x, norm.weight, norm.bias, norm.eps, act, out_qparams)
    if x.dtype == torch.bfloat16 and x.shape[-1] % 16 and inference(x):
        w = None if norm.weight is None else norm.weight.float()
        b = None if norm.bias is None else norm.bias.float()
        y = F.layer_norm(x.float(), norm.normalized_shape, w, b, norm.eps).to(x.dtype)
    else:
        y = F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    y = F.silu(y) if act == 'silu' else y
    return y if out_qparams is None else quantize_u8(y.float().contiguous(), *out_qparams)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for 2-D tensors (any strides), through oneDNN where it applies."""
    if _onednn_ok(a, b.t()):
        return _LINEAR(a, b.t(), None, 'none', [], '')
    return a.mm(b)


def weight_grad(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``g^T x`` for ``g`` (M, N), ``x`` (M, K): the order whose transposed left operand
    (which oneDNN copies) is the narrower one."""
    if g.shape[1] <= x.shape[1]:
        return matmul(g.t(), x)
    return matmul(x.t(), g).t()


class _Linear(torch.autograd.Function):
    """``F.linear`` with oneDNN matmuls in forward and backward (same saved tensors)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        if _onednn_ok(x, weight):
            return _LINEAR(x, weight, bias, 'none', [], '')
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1])
        gx = matmul(g2, weight).view(x.shape) if ctx.needs_input_grad[0] else None
        gw = weight_grad(g2, x.reshape(-1, x.shape[-1])) if ctx.needs_input_grad[1] else None
        gb = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
           act: Optional[str] = None, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``act(F.linear(x, weight, bias)) + residual`` (``act``: ``None`` or ``'silu'``).

    Inference: one oneDNN call with the activation or the residual add fused.  Under
    autograd: an autograd Function with oneDNN matmuls (plain ``F.linear`` when tracing).
    An :class:`~enformer_core.ops.quantized.Int8Weight` (the int8 deployment form) runs
    oneDNN's int8 kernel.
    """
    if isinstance(weight, Int8Weight):
        return int8_linear(x, weight, bias, act, residual)
    if inference(x) and _onednn_ok(x, weight):
        if residual is not None and act is None:
            return _LINEAR(x, residual, weight, bias, 'add')
        out = _LINEAR(x, weight, bias, _ACTS[act], [], '')
    elif custom_grad(x) and _onednn_ok(x, weight):
        out = _Linear.apply(x, weight, bias)
    else:
        out = F.linear(x, weight, bias)
        if act == 'silu':
            out = F.silu(out, inplace=inference(x))
    if residual is None:
        return out
    return out.add_(residual) if inference(x) else out + residual


MLP_ROWS = 16384  #: token block of the inference MLP (:func:`mlp`)


def mlp(x: torch.Tensor, w1: torch.Tensor, b1: Optional[torch.Tensor], w2: torch.Tensor,
        b2: Optional[torch.Tensor], residual: Optional[torch.Tensor] = None,
        rows: Optional[int] = None) -> torch.Tensor:
    """``residual + linear(silu(linear(x, w1, b1)), w2, b2)`` in inference.

    Large maps go through in blocks of ``rows`` tokens so that the wide hidden block stays in
    cache instead of making a round trip through memory (2x faster for EnFormer-S's first
    stage on one core; no effect on small maps).  ``rows`` defaults to :data:`MLP_ROWS`.
    """
    rows = rows or MLP_ROWS
    if isinstance(w1, Int8Weight) and isinstance(w2, Int8Weight):
        return int8_mlp(x, w1, b1, w2, b2, residual)
    n = x.numel() // max(x.shape[-1], 1)
    # blocks for float weights only: one int8 weight (the other kept float) quantises its
    # whole input at once, as it would alone
    if isinstance(w2, Int8Weight) or not (inference(x) and _onednn_ok(x, w1)) or \
            n <= 2 * rows:
        return linear(linear(x, w1, b1, act='silu'), w2, b2, residual=residual)
    flat = x.reshape(n, x.shape[-1])
    res = None if residual is None else residual.reshape(n, w2.shape[0])
    out = flat.new_empty(n, w2.shape[0])
    for s in range(0, n, rows):
        out[s:s + rows] = linear(linear(flat[s:s + rows], w1, b1, act='silu'), w2, b2,
                                 residual=None if res is None else res[s:s + rows])
    return out.view(*x.shape[:-1], w2.shape[0])


def conv_mlp(x: torch.Tensor, conv: torch.nn.Module, w1, b1, w2, b2,
             residual: Optional[torch.Tensor] = None,
             norm: Optional[torch.nn.LayerNorm] = None) -> torch.Tensor:
    """``residual + mlp(conv(norm(x)))`` in inference for a channels-last ``(B, H, W, C)``
    map, ``conv`` acting on its ``(B, C, H, W)`` view (EnFormer's FFN; ``norm`` optional).
    The static int8 form (an :class:`~enformer_core.ops.quantized_conv.Int8Conv2d` before
    int8 Linears) passes uint8 activations from the LayerNorm to ``fc2``: the norm writes
    the conv's uint8 input (:func:`layer_norm`), the conv ``fc1``'s, ``fc1`` ``fc2``'s."""
    if isinstance(conv, Int8Conv2d) and isinstance(w1, Int8Weight) and \
            isinstance(w2, Int8Weight):
        if norm is not None and x.dim() == 4 and x.numel() and \
                conv_chain(conv.weight, w1, w2):
            xq = layer_norm(x, norm, out_qparams=conv.weight.input_qparams)
            return conv_mlp_u8(xq, conv.weight, conv.bias, w1, b1, w2, b2, residual)
        x = x if norm is None else layer_norm(x, norm)
        return int8_conv_mlp(x, conv.weight, conv.bias, w1, b1, w2, b2, residual)
    x = x if norm is None else layer_norm(x, norm)
    return mlp(conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1), w1, b1, w2, b2, residual)


def coords_conv(x: torch.Tensor, coords, conv: torch.nn.Module) -> torch.Tensor:
    """``conv(coords(x))`` in inference: the stem's first conv on the ``(B, C, H, W)`` image
    with its coordinate channels appended by ``coords`` (a
    :class:`~enformer_core.models.layers.CoordinateGrid`) in channels-last memory.  In the
    static int8 form the image and the cached coordinates are quantised straight into the
    conv's uint8 input (:func:`~enformer_core.ops.native.quantize_planes`): no float32
    concatenation, no quantise pass."""
    if isinstance(conv, Int8Conv2d) and x.dim() == 4 and x.numel() and \
            conv_chain(conv.weight) and native.supports(x):
        qparams = conv.weight.input_qparams
        grid = coords.grid(x.shape[2], x.shape[3], x.device, x.dtype)[0].permute(1, 2, 0)
        extra = quantize_u8(grid.contiguous(), *qparams)               # (H, W, 2)
        return int8_conv2d_u8(native.quantize_planes(x, extra, qparams), conv.weight, conv.bias)
    return conv(coords(x, channels_last=True))


def norm_silu_conv(x: torch.Tensor, norm: torch.nn.LayerNorm,
                   conv: torch.nn.Module) -> torch.Tensor:
    """``conv(silu(norm(x)))`` in inference for a ``(B, C, H, W)`` map in channels-last
    memory, ``norm`` over C (EnFormer's stem).  The LayerNorm and SiLU are one pass
    (:func:`layer_norm`), which in the static int8 form also writes the conv's uint8
    input."""
    h = x.permute(0, 2, 3, 1)
    if isinstance(conv, Int8Conv2d) and x.numel() and conv_chain(conv.weight):
        return int8_conv2d_u8(layer_norm(h, norm, 'silu', conv.weight.input_qparams),
                              conv.weight, conv.bias)
    return conv(layer_norm(h, norm, 'silu').permute(0, 3, 1, 2))


class LinearSiLULinear(torch.autograd.Function):
    """``(silu(x W1^T + b1)) W2^T + b2`` saving only ``x`` and ``z = x W1^T + b1``."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):
        with torch.no_grad():
            z = linear(x, w1, b1)
            out = linear(F.silu(z), w2, b2)
        ctx.save_for_backward(x, w1, z, w2)
        ctx.has_b1, ctx.has_b2 = b1 is not None, b2 is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w1, z, w2 = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1])
        z2 = z.view(-1, z.shape[-1])
        gw2 = weight_grad(g2, F.silu(z2)) if ctx.needs_input_grad[3] else None  # recomputed
        gb2 = g2.sum(0) if ctx.has_b2 and ctx.needs_input_grad[4] else None
        gz2 = torch.ops.aten.silu_backward(matmul(g2, w2), z2)
        gw1 = weight_grad(gz2, x.reshape(-1, x.shape[-1])) if ctx.needs_input_grad[1] else None
        gb1 = gz2.sum(0) if ctx.has_b1 and ctx.needs_input_grad[2] else None
        gx = matmul(gz2, w1).view_as(x) if ctx.needs_input_grad[0] else None
        return gx, gw1, gb1, gw2, gb2


def linear_silu_linear(x, w1, b1, w2, b2):
    """``F.linear(F.silu(F.linear(x, w1, b1)), w2, b2)``, memory-lean under autograd."""
    if custom_grad(x):
        return LinearSiLULinear.apply(x, w1, b1, w2, b2)
    return linear(linear(x, w1, b1, act='silu'), w2, b2)


class _AdaptiveAvgPool(torch.autograd.Function):
    """``F.adaptive_avg_pool2d`` that keeps only the input's shape for backward (the
    gradient of an average does not depend on the values)."""

    @staticmethod
    def forward(ctx, x, size):
        ctx.shape, ctx.channels_last = x.shape, x.is_contiguous(
            memory_format=torch.channels_last)
        return F.adaptive_avg_pool2d(x, size)

    @staticmethod
    def backward(ctx, grad):
        fmt = torch.channels_last if ctx.channels_last else torch.contiguous_format
        like = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device,
                           memory_format=fmt)  # shape and layout only
        return torch.ops.aten._adaptive_avg_pool2d_backward(grad.contiguous(memory_format=fmt),
                                                            like), None


def adaptive_avg_pool_nchw(x: torch.Tensor, size) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, size)``; under autograd it saves nothing of ``x``."""
    if custom_grad(x):
        return _AdaptiveAvgPool.apply(x, size)
    return F.adaptive_avg_pool2d(x, size)
