"""Small building blocks shared by every backbone of the package."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import fused


class RecordsAssignment:
    """Mixin of every clustering module: with ``record = True`` (switched on for one pass by
    :func:`enformer_core.analysis.record_assignments`) the module keeps its assignment in
    ``last_assignment`` for pictures and inspection; off, it costs nothing."""

    record: bool = False
    last_assignment: Optional[torch.Tensor] = None

    def keep_assignment(self, assignment: torch.Tensor) -> None:
        if self.record:
            self.last_assignment = assignment.detach()


class LayerNorm2d(nn.LayerNorm):
    """Channels-first LayerNorm over C of a ``(B, C, H, W)`` map (ConvNeXt style, eps 1e-6)."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused.layer_norm(x.permute(0, 2, 3, 1), self).permute(0, 3, 1, 2)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity at evaluation or when ``p == 0``)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f'p={self.p}'


class LayerScaleLinear(nn.Module):
    """``Linear`` whose output is scaled per channel by a learnt ``gamma`` (layer scale).

    ``fuse()`` folds ``gamma`` into the weights (deploy form, no ``gamma`` parameter).
    """

    def __init__(self, in_features: int, out_features: int, init_value: float = 1e-6,
                 deploy: bool = False):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)
        self.gamma = None if deploy else nn.Parameter(torch.full((out_features,), init_value))

    def folded(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(weight, bias)`` with ``gamma`` folded in (recomputed each call: a tiny cost,
        and never stale; differentiable under autograd)."""
        if self.gamma is None:
            return self.fc.weight, self.fc.bias
        return self.fc.weight * self.gamma.view(-1, 1), self.fc.bias * self.gamma

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``residual + gamma * fc(x)`` as one Linear with ``gamma`` folded in (one fused
        call in inference; under autograd nothing output-sized is saved for ``gamma``)."""
        return fused.linear(x, *self.folded(), residual=residual)

    @torch.no_grad()
    def fuse(self) -> None:
        if self.gamma is None:
            return
        self.fc.weight.mul_(self.gamma.view(-1, 1))
        self.fc.bias.mul_(self.gamma)
        self.gamma = None


class _DepthwiseConv(torch.autograd.Function):
    """Stride-1, "same"-padded depthwise conv whose input gradient is the forward conv with
    the flipped kernel (the transposed conv, exactly): oneDNN's backward-data of a dilated
    depthwise kernel is 3-9x slower than that (EnFormer-L's stage-2 branches).  The weight
    gradient stays PyTorch's."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int, dilation: int):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation, ctx.has_bias = padding, dilation, bias is not None
        return F.conv2d(x, weight, bias, 1, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        return _depthwise_backward(ctx, grad, _aten_weight_grad)


class _SmallMapDepthwiseConv(_DepthwiseConv):
    """Depthwise conv whose weight gradient is computed as ``k*k`` channels-last reductions.

    oneDNN's depthwise weight gradient is pathologically slow when the map is smaller than
    the kernel (a 2x2 map with a 3x3 kernel: ~14 ms for 32 x 320 channels, 7x the rest of the
    conv); the forward pass is PyTorch's own.
    """

    @staticmethod
    def backward(ctx, grad):
        return _depthwise_backward(ctx, grad, _taps_weight_grad)


def _aten_weight_grad(grad, x, weight, p: int, d: int) -> torch.Tensor:
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, (1, 1), (p, p), (d, d), False, (0, 0), weight.shape[0],
        (False, True, False))[1]


def _taps_weight_grad(grad, x, weight, p: int, d: int) -> torch.Tensor:
    h, w, k = x.shape[-2], x.shape[-1], weight.shape[-1]
    xp = F.pad(x, (p, p, p, p)).permute(0, 2, 3, 1)  # (B, H+2p, W+2p, C)
    g = grad.permute(0, 2, 3, 1)
    taps = [(xp[:, u * d:u * d + h, v * d:v * d + w] * g).sum((0, 1, 2))
            for u in range(k) for v in range(k)]
    return torch.stack(taps, 1).view_as(weight)


def _depthwise_backward(ctx, grad, weight_grad):
    x, weight = ctx.saved_tensors
    p, d = ctx.padding, ctx.dilation
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:  # the transposed conv = the conv with the flipped kernel
        grad_x = F.conv2d(grad, weight.flip(-1, -2), None, 1, p, d, weight.shape[0])
    if ctx.needs_input_grad[1]:
        grad_w = weight_grad(grad, x, weight, p, d)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_b = grad.sum((0, 2, 3))
    return grad_x, grad_w, grad_b, None, None


def depthwise_conv2d(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` for a depthwise, stride-1, "same"-padded ``conv``; same values and
    gradients, faster backward: :class:`_DepthwiseConv`, or :class:`_SmallMapDepthwiseConv`
    for maps smaller than the dilated kernel."""
    if not fused.custom_grad(x) or not (x.requires_grad or conv.weight.requires_grad):
        return conv(x)
    span = conv.dilation[0] * (conv.kernel_size[0] - 1) + 1
    fn = _SmallMapDepthwiseConv if min(x.shape[-2:]) < span else _DepthwiseConv
    return fn.apply(x, conv.weight, conv.bias, conv.padding[0], conv.dilation[0])


# extra (kernel, dilation) branches of the re-parameterisable depthwise conv, by main kernel
REPARAM_BRANCHES: Dict[int, List[Tuple[int, int]]] = {
    3: [(1, 1)],
    5: [(3, 1), (3, 2)],
    7: [(5, 1), (3, 2), (3, 3)],
}


class ReparamDWConv(nn.Module):
    """Depthwise conv with parallel dilated branches, foldable into one conv.

    Training form: ``bn_out(bn(dw_k(x)) + sum_i bn_i(dw_{k_i, d_i}(x)))`` (no conv biases).
    ``reparameterize()`` folds every BatchNorm and branch into a single ``dw_k`` with bias;
    the fused module equals the unfused one in eval mode.
    """

    def __init__(self, channels: int, kernel_size: int, deploy: bool = False):
        super().__init__()
        if kernel_size not in REPARAM_BRANCHES:
            raise ValueError(f'ReparamDWConv supports kernel sizes {sorted(REPARAM_BRANCHES)}, '
                             f'got {kernel_size}')
        self.channels = channels
        self.kernel_size = kernel_size
        pad = kernel_size // 2
        self.deploy = deploy
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=pad, groups=channels,
                              bias=deploy)
        if deploy:
            return
        self.bn = nn.BatchNorm2d(channels)
        self.branch_convs = nn.ModuleList()
        self.branch_bns = nn.ModuleList()
        for k, d in REPARAM_BRANCHES[kernel_size]:
            self.branch_convs.append(nn.Conv2d(channels, channels, k, padding=d * (k - 1) // 2,
                                               dilation=d, groups=channels, bias=False))
            self.branch_bns.append(nn.BatchNorm2d(channels))
        self.bn_out = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            return self.conv(x)
        if not self.training and fused.inference(x):  # eval: the folded kernel, one conv
            weight, bias = self.fused_kernel()  # recomputed each call: tiny, never stale
            return F.conv2d(x, weight, bias, 1, self.kernel_size // 2, 1, self.channels)
        out = self.bn(depthwise_conv2d(x, self.conv))
        for conv, bn in zip(self.branch_convs, self.branch_bns):
            out = out + bn(depthwise_conv2d(x, conv))
        return self.bn_out(out)

    @staticmethod
    def _fold_bn(weight: torch.Tensor, bias: torch.Tensor, bn: nn.BatchNorm2d):
        std = (bn.running_var + bn.eps).sqrt()
        scale = bn.weight / std
        return weight * scale.view(-1, 1, 1, 1), (bias - bn.running_mean) * scale + bn.bias

    def _dilated_to_dense(self, weight: torch.Tensor, dilation: int) -> torch.Tensor:
        """Embed a (dilated) k_i x k_i kernel into the main k x k kernel grid."""
        k_i = weight.shape[-1]
        span = dilation * (k_i - 1) + 1
        dense = weight.new_zeros(weight.shape[0], 1, span, span)
        dense[:, :, ::dilation, ::dilation] = weight
        pad = (self.kernel_size - span) // 2
        return F.pad(dense, (pad, pad, pad, pad))

    def fused_kernel(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The eval-mode ``(weight, bias)`` of the single equivalent ``k x k`` conv."""
        zero = self.conv.weight.new_zeros(self.channels)
        weight, bias = self._fold_bn(self.conv.weight, zero, self.bn)
        for (k, d), conv, bn in zip(REPARAM_BRANCHES[self.kernel_size], self.branch_convs,
                                    self.branch_bns):
            w_i, b_i = self._fold_bn(conv.weight, zero, bn)
            weight = weight + self._dilated_to_dense(w_i, d)
            bias = bias + b_i
        return self._fold_bn(weight, bias, self.bn_out)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.deploy:
            return
        weight, bias = self.fused_kernel()
        conv = nn.Conv2d(self.channels, self.channels, self.kernel_size,
                         padding=self.kernel_size // 2, groups=self.channels, bias=True,
                         device=weight.device, dtype=weight.dtype)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        self.conv = conv
        for name in ('bn', 'branch_convs', 'branch_bns', 'bn_out'):
            delattr(self, name)
        self.deploy = True


class CoordinateGrid:
    """Cached coordinate channels appended to the image (the backbones' only position signal).

    ``mode='enformer'``: ``y_i = (i - 0.5)/(H - 1)`` (as published, ``docs/architecture.md``);
    ``mode='centered'``: ``y_i = i/(H - 1) - 0.5`` (Context Clusters / FEC, as published).
    The grid is built on the input's device and dtype and cached per (H, W, device, dtype).
    """

    def __init__(self, mode: str = 'enformer', max_cache: int = 16):
        if mode not in ('enformer', 'centered'):
            raise ValueError(f'unknown coordinate mode {mode!r}')
        self.mode = mode
        self.max_cache = max_cache
        self._cache: Dict[tuple, torch.Tensor] = {}

    def _axis(self, n: int, device, dtype) -> torch.Tensor:
        i = torch.arange(n, device=device, dtype=torch.float64)
        denom = max(n - 1, 1)
        v = (i - 0.5) / denom if self.mode == 'enformer' else i / denom - 0.5
        return v.to(dtype)

    def grid(self, height: int, width: int, device=None,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The ``(1, 2, H, W)`` coordinate channels (y, then x), cached."""
        key = (height, width, torch.device(device or 'cpu'), dtype)
        grid = self._cache.get(key)
        if grid is None:
            ys = self._axis(height, key[2], dtype).view(height, 1).expand(height, width)
            xs = self._axis(width, key[2], dtype).view(1, width).expand(height, width)
            grid = torch.stack([ys, xs]).unsqueeze(0)
            if len(self._cache) >= self.max_cache:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = grid
        return grid

    def __call__(self, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """``(B, C + 2, H, W)``; ``channels_last=True`` builds it in channels-last memory
        (one interleaving copy, which the first conv would otherwise make far more slowly)."""
        b, _, h, w = x.shape
        grid = self.grid(h, w, x.device, x.dtype)
        if channels_last:
            coords = grid.permute(0, 2, 3, 1).expand(b, -1, -1, -1)
            return torch.cat([x.permute(0, 2, 3, 1), coords], dim=-1).permute(0, 3, 1, 2)
        return torch.cat([x, grid.expand(b, -1, -1, -1)], dim=1)


def check_image_input(x: torch.Tensor, in_channels: int, min_size: int, name: str) -> None:
    """Clear errors for the wrong kind of input (the most common first-day mistakes)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f'{name} expects a torch.Tensor, got {type(x).__name__}')
    if x.dim() != 4:
        raise ValueError(f'{name} expects a 4-D (B, C, H, W) tensor, got shape '
                         f'{tuple(x.shape)}')
    if x.shape[1] != in_channels:
        raise ValueError(f'{name} expects {in_channels} input channels (RGB; the coordinate '
                         f'channels are added inside), got {x.shape[1]} in shape '
                         f'{tuple(x.shape)}')
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(f'{name} needs inputs of at least {min_size}x{min_size} pixels, got '
                         f'{x.shape[2]}x{x.shape[3]}')


def to_2tuple(v) -> Tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    if len(v) != 2:
        raise ValueError(f'expected an int or a pair, got {v}')
    return (int(v[0]), int(v[1]))


def as_list(v, n: int, name: str) -> list:
    if isinstance(v, Sequence) and not isinstance(v, (str, dict)):
        v = list(v)
        if len(v) != n:
            raise ValueError(f'{name} must have {n} entries (one per stage), got {len(v)}')
        return v
    return [v] * n
