"""int8 2-D convolutions for CPU inference on oneDNN's VNNI kernels (``docs/benchmarks.md``).

The same quantisation as the int8 Linears (:mod:`enformer_core.ops.quantized`):

* **weights** ``(C_out, C_in / groups, kh, kw)`` symmetric per output channel,
  ``W ~= s_w[:, None, None, None] * Q_w``, ``Q_w`` int8 in [-127, 127];
* **activations** uint8 per tensor, ``x ~= s_x (Q_x - z_x)``, dynamic or static (calibrated);
  zero padding pads with ``z_x``, which is exactly zero;
* ``onednn::qconv_pointwise`` accumulates ``(Q_x - z_x) * Q_w`` in int32, rescales by
  ``s_x s_w``, adds the bias and writes float32, or uint8 at the next layer's static input
  quantisation (:func:`int8_conv_mlp`: EnFormer's FFN ``dwconv -> fc1 -> fc2`` passes uint8
  from layer to layer, a quarter of float32's bytes and no quantise pass in between).

Shapes: ``x`` ``(B, C_in, H, W)`` float32 in any memory format (it is quantised into
channels-last memory, which the kernel reads); output ``(B, C_out, H', W')`` channels-last.

:func:`int8_conv2d` is the fast path and :func:`int8_conv2d_reference` the same maths in
float ops (dequantise, then ``F.conv2d``), which the tests compare it with.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .quantized import (_ONEDNN, HAS_INT8_LINEAR, Int8Module, Int8Weight, int8_mlp,
                        int8_mlp_reference, mlp_u8, quantize_u8, quantize_u8_reference,
                        static_chain)

HAS_INT8_CONV = (HAS_INT8_LINEAR and hasattr(_ONEDNN, 'qconv_pointwise')
                 and hasattr(_ONEDNN, 'qconv_prepack'))

__all__ = ['HAS_INT8_CONV', 'Int8Conv2d', 'Int8ConvWeight', 'conv_chain', 'conv_mlp_u8',
           'int8_conv2d', 'int8_conv2d_u8', 'int8_conv2d_reference', 'int8_conv_mlp',
           'int8_conv_mlp_reference']


def _pair(v) -> List[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(i) for i in v]


class Int8ConvWeight(Int8Weight):
    """A conv weight quantised per output channel and packed for oneDNN, with the conv's
    geometry (stride, padding, dilation, groups) and its input quantisation."""

    ndim = 4

    def __init__(self, weight: torch.Tensor, stride=1, padding=0, dilation=1, groups: int = 1):
        self.stride, self.padding = _pair(stride), _pair(padding)
        self.dilation, self.groups = _pair(dilation), int(groups)
        super().__init__(weight)

    def _in_features(self, qweight: torch.Tensor) -> int:
        return qweight.shape[1] * self.groups          # input channels

    def _kernel_available(self) -> bool:
        return HAS_INT8_CONV

    def _pack(self, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        # (the packed layout does not depend on the input quantisation passed here)
        return _ONEDNN.qconv_prepack(qweight, scale, 1.0, 0, self.stride, self.padding,
                                     self.dilation, self.groups, None)

    def geometry(self) -> Tuple[List[int], List[int], List[int], int]:
        return self.stride, self.padding, self.dilation, self.groups


def _check(x: torch.Tensor, weight: Int8ConvWeight) -> None:
    if x.dim() != 4 or x.shape[1] != weight.in_features:
        raise ValueError(f'the int8 conv expects a (B, {weight.in_features}, H, W) input, got '
                         f'shape {tuple(x.shape)}')


def _float_conv(x, weight: Int8ConvWeight, bias) -> torch.Tensor:
    """The dequantised weight on float inputs: NaN/Inf inputs (which reach only their own
    samples, as in the float model) and empty batches."""
    s, p, d, g = weight.geometry()
    return F.conv2d(x.float(), weight.dequantize(), None if bias is None else bias.float(),
                    s, p, d, g)


def int8_conv2d_reference(x: torch.Tensor, weight: Int8ConvWeight,
                          bias: Optional[torch.Tensor]) -> torch.Tensor:
    """:func:`int8_conv2d`'s quantised maths in float ops (for tests)."""
    scale, zp = weight.input_quantization(x.float(), record=False)
    xq = quantize_u8_reference(x.float(), scale, zp).float()
    return _float_conv((xq - zp) * scale, weight, bias)


def _qconv(xq: torch.Tensor, scale: float, zp: int, weight: Int8ConvWeight, bias,
           out_qparams: Optional[Tuple[float, int]] = None) -> torch.Tensor:
    """oneDNN's int8 conv on channels-last uint8 ``xq``: float32 out, or uint8 at
    ``out_qparams``."""
    o_scale, o_zp = out_qparams or (1.0, 0)
    return _ONEDNN.qconv_pointwise(
        xq, scale, zp, weight.packed, weight.scale, weight.zero_point,
        None if bias is None else bias.float(), *weight.geometry(), o_scale, o_zp,
        None if out_qparams else torch.float32, 'none', [], '')


def int8_conv2d(x: torch.Tensor, weight: Int8ConvWeight,
                bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``conv2d(x, W, b)`` with int8 ``W`` and uint8-quantised ``x``; float32 in and out
    (channels-last memory out)."""
    _check(x, weight)
    if x.shape[0] == 0 or x.numel() == 0:
        return _float_conv(x, weight, bias)
    x = x.float().contiguous(memory_format=torch.channels_last)
    scale, zp = weight.input_quantization(x)      # (recorded here when calibrating)
    if not HAS_INT8_CONV:
        return int8_conv2d_reference(x, weight, bias)
    if math.isnan(scale):
        return _float_conv(x, weight, bias)
    return _qconv(quantize_u8(x, scale, zp), scale, zp, weight, bias)


def int8_conv2d_u8(xq: torch.Tensor, weight: Int8ConvWeight,
                   bias: Optional[torch.Tensor]) -> torch.Tensor:
    """:func:`int8_conv2d` on ``xq``: the map already quantised at ``weight``'s static input
    quantisation, a contiguous channels-last ``(B, H, W, C)`` uint8 tensor (written by
    :func:`enformer_core.ops.native.layer_norm`); float32 ``(B, C_out, H', W')`` out."""
    return _qconv(xq.permute(0, 3, 1, 2), *weight.input_qparams, weight, bias)


def int8_conv_mlp(x: torch.Tensor, conv: Int8ConvWeight, conv_bias: Optional[torch.Tensor],
                  w1: Int8Weight, b1: Optional[torch.Tensor], w2: Int8Weight,
                  b2: Optional[torch.Tensor],
                  residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``residual + fc2(silu(fc1(conv(x))))`` for a channels-last ``(B, H, W, C)`` map
    (``conv`` acts on its ``(B, C, H, W)`` view): EnFormer's FFN in int8.

    With static input quantisation on all three layers the activations stay uint8 from the
    conv's input to ``fc2``'s (:func:`conv_mlp_u8`); otherwise :func:`int8_conv2d` then
    :func:`~enformer_core.ops.quantized.int8_mlp`.
    """
    if x.dim() != 4:
        raise ValueError(f'int8_conv_mlp expects a channels-last (B, H, W, C) map, got shape '
                         f'{tuple(x.shape)}')
    if not conv_chain(conv, w1, w2) or x.numel() == 0:
        y = int8_conv2d(x.permute(0, 3, 1, 2), conv, conv_bias).permute(0, 2, 3, 1)
        return int8_mlp(y, w1, b1, w2, b2, residual)
    _check(x.permute(0, 3, 1, 2), conv)
    xq = quantize_u8(x.float().contiguous(), *conv.input_qparams)
    return conv_mlp_u8(xq, conv, conv_bias, w1, b1, w2, b2, residual)


def conv_chain(conv: Int8ConvWeight, *weights: Int8Weight) -> bool:
    """Whether an int8 conv and the int8 layers after it can pass uint8 from layer to layer
    (:func:`~enformer_core.ops.quantized.static_chain` with the conv kernel)."""
    return HAS_INT8_CONV and static_chain(conv, *weights)


def conv_mlp_u8(xq: torch.Tensor, conv: Int8ConvWeight, conv_bias: Optional[torch.Tensor],
                w1: Int8Weight, b1: Optional[torch.Tensor], w2: Int8Weight,
                b2: Optional[torch.Tensor], residual: Optional[torch.Tensor]) -> torch.Tensor:
    """:func:`int8_conv_mlp` on ``xq``: the map already quantised at ``conv``'s static input
    quantisation, a contiguous ``(B, H, W, C)`` uint8 tensor.  The conv writes ``fc1``'s
    uint8 input, ``fc1`` writes ``fc2``'s; float32 ``(B, H', W', N)`` out."""
    hq = _qconv(xq.permute(0, 3, 1, 2), *conv.input_qparams, conv, conv_bias,
                out_qparams=w1.input_qparams)
    hq = hq.permute(0, 2, 3, 1)                   # (B, H', W', C) view of channels-last memory
    lead = hq.shape[:-1]
    res = None if residual is None else residual.reshape(-1, w2.out_features)
    out = mlp_u8(hq.reshape(-1, hq.shape[-1]), w1, b1, w2, b2, res)
    return out.view(*lead, w2.out_features)


def int8_conv_mlp_reference(x, conv, conv_bias, w1, b1, w2, b2, residual=None):
    """:func:`int8_conv_mlp`'s maths with float ops (for tests)."""
    y = int8_conv2d_reference(x.permute(0, 3, 1, 2), conv, conv_bias).permute(0, 2, 3, 1)
    return int8_mlp_reference(y, w1, b1, w2, b2, residual)


class Int8Conv2d(Int8Module):
    """Inference replacement of an ``nn.Conv2d`` with zero padding (:meth:`from_conv`)."""

    def __init__(self, weight: Int8ConvWeight, bias: Optional[torch.Tensor]):
        super().__init__(weight, bias)
        self.in_channels, self.out_channels = weight.in_features, weight.out_features

    @staticmethod
    def supports(conv: nn.Module) -> bool:
        """Whether :meth:`from_conv` converts ``conv``: an ``nn.Conv2d`` with numeric zero
        padding (what oneDNN's int8 conv computes)."""
        return (isinstance(conv, nn.Conv2d) and conv.padding_mode == 'zeros'
                and not isinstance(conv.padding, str))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> 'Int8Conv2d':
        if not cls.supports(conv):
            raise ValueError(f'Int8Conv2d converts an nn.Conv2d with numeric zero padding, got '
                             f'{conv!r}')
        return cls(Int8ConvWeight(conv.weight, conv.stride, conv.padding, conv.dilation,
                                  conv.groups), conv.bias)

    def extra_repr(self) -> str:
        s, p, d, g = self.weight.geometry()
        return (f'{self.in_channels}, {self.out_channels}, kernel_size='
                f'{tuple(self.qweight.shape[2:])}, stride={tuple(s)}, padding={tuple(p)}, '
                f'dilation={tuple(d)}, groups={g}, int8 weights, {self.weight.mode} uint8 '
                f'activations')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_conv2d(x, self.weight, self.bias)
