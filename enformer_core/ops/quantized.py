"""int8 Linear layers for CPU inference on oneDNN's VNNI kernels (``docs/benchmarks.md``).

A Linear ``y = x W^T + b`` with

* **weights** quantised once, symmetric per output channel:
  ``W ~= s_w[:, None] * Q_w``, ``s_w = max_k |W[:, k]| / 127``, ``Q_w`` int8 in [-127, 127];
* **activations** quantised asymmetric per tensor from a range ``[lo, hi]``:
  ``x ~= s_x * (Q_x - z_x)``, ``s_x = (max(hi, 0) - min(lo, 0)) / 255``,
  ``z_x = round(-min(lo, 0) / s_x)``, ``Q_x = clamp(round(x / s_x) + z_x, 0, 255)`` uint8.
  *Dynamic* (default): the range of the call's own input, one extra pass, no data needed.
  *Static*: the ranges seen over calibration batches (:func:`calibrate`), fixed afterwards:
  no range pass, and the FFN passes uint8 from ``fc1`` to ``fc2``, its SiLU a table on
  ``fc1``'s uint8 pre-activation (:func:`mlp_u8`; values beyond a range saturate);
* the product ``s_x s_w (Q_x - z_x) Q_w^T`` accumulated in int32 by oneDNN's
  ``onednn::qlinear_pointwise`` (AVX-512 VNNI), rescaled to float32 (bias, SiLU or residual
  add fused) or requantised to uint8.

Shapes: ``x`` ``(..., K)`` float32, ``Q_w`` ``(N, K)``, output ``(..., N)`` float32.
:func:`int8_linear` is the fast path, :func:`int8_linear_reference` the same maths in float
ops (for tests).  The kernels ship with PyTorch's CPU build: no extra package.
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from typing import Iterable, Iterator, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import native

_ONEDNN = getattr(torch.ops, 'onednn', None)
HAS_INT8_LINEAR = (torch.backends.mkldnn.is_available() and _ONEDNN is not None
                   and hasattr(_ONEDNN, 'qlinear_pointwise')
                   and hasattr(_ONEDNN, 'qlinear_prepack'))
_ACTS = {None: 'none', 'silu': 'swish'}
_HAS_QUANTIZER = hasattr(torch, 'quantize_per_tensor') and hasattr(torch, 'quint8')

__all__ = ['HAS_INT8_LINEAR', 'Int8Linear', 'Int8Module', 'Int8Weight', 'activation_qparams',
           'calibrate', 'int8_linear', 'int8_linear_reference', 'int8_mlp', 'int8_mlp_reference',
           'mlp_u8', 'qparams_from_range', 'quantize_u8', 'quantize_u8_reference',
           'static_chain']


class Int8Weight:
    """A Linear's weight quantised per output channel and packed for oneDNN, plus the
    quantisation of its input: dynamic (``input_qparams is None``) or static.

    Not a tensor: code that would do float maths with it fails loudly instead of silently
    using a dequantised copy.  :meth:`dequantize` gives the float weight it stands for.
    Subclasses (:class:`~enformer_core.ops.quantized_conv.Int8ConvWeight`) change the
    shape check and the oneDNN packing only.
    """

    ndim = 2   #: the float weight's dimensions (Linear: (out, in))

    def __init__(self, weight: torch.Tensor):
        if weight.dim() != self.ndim:
            raise ValueError(f'expected a {self.ndim}-D weight (out, in, ...); got shape '
                             f'{tuple(weight.shape)}')
        w = weight.detach().float().cpu()
        scale = (w.flatten(1).abs().amax(1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
        self._set(torch.round(w / self._per_channel(scale)).clamp_(-127, 127).to(torch.int8),
                  scale)
        self.input_qparams: Optional[Tuple[float, int]] = None   # static (s_x, z_x)
        self.observed: Optional[Tuple[float, float]] = None      # calibration range
        self.observing = False
        # an FFN fc1's static pre-activation quantisation (its SiLU is then a table)
        self.act_qparams: Optional[Tuple[float, int]] = None
        self.act_observed: Optional[Tuple[float, float]] = None

    def _per_channel(self, scale: torch.Tensor) -> torch.Tensor:
        return scale.view(-1, *[1] * (self.ndim - 1))

    def _set(self, qweight: torch.Tensor, scale: torch.Tensor) -> None:
        self.qweight, self.scale = qweight, scale
        self.out_features, self.in_features = qweight.shape[0], self._in_features(qweight)
        self.zero_point = torch.zeros(self.out_features, dtype=torch.int64)
        # oneDNN's blocked copy of Q_w: an opaque tensor that cannot be copied or pickled,
        # so copies and pickles carry (Q_w, s_w) and pack again (__getstate__/__setstate__)
        self.packed = self._pack(qweight, scale) if self._kernel_available() else None

    def _in_features(self, qweight: torch.Tensor) -> int:
        return qweight.shape[1]

    def _kernel_available(self) -> bool:
        return HAS_INT8_LINEAR

    def _pack(self, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return _ONEDNN.qlinear_prepack(qweight, None)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != 'packed'}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._set(state['qweight'], state['scale'])

    @property
    def shape(self) -> torch.Size:
        return self.qweight.shape

    def dequantize(self) -> torch.Tensor:
        """The float32 weight ``s_w[:, None] * Q_w`` that the int8 kernel multiplies by."""
        return self.qweight.float() * self._per_channel(self.scale)

    def input_quantization(self, x2: torch.Tensor, record: bool = True) -> Tuple[float, int]:
        """``(s_x, z_x)`` for this call: the static ones, or ``x2``'s own (recorded while
        calibrating, unless ``record`` is off)."""
        if self.input_qparams is not None and not self.observing:
            return self.input_qparams
        if x2.numel() == 0:
            return 1.0, 0
        lo, hi = _range(x2)
        if record and self.observing:
            self.observed = _widen(self.observed, lo, hi)
        return qparams_from_range(lo, hi)

    def observe_preactivation(self, z: torch.Tensor) -> None:
        """Widen the recorded range of this layer's output before its SiLU (calibrating)."""
        if z.numel():
            self.act_observed = _widen(self.act_observed, *_range(z))

    @property
    def mode(self) -> str:
        """``'dynamic'`` or ``'static'`` input quantisation."""
        return 'dynamic' if self.input_qparams is None else 'static'

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(out_features={self.out_features}, '
                f'in_features={self.in_features}, {self.mode} input)')


def qparams_from_range(lo: float, hi: float) -> Tuple[float, int]:
    """``(s_x, z_x)`` of the uint8 quantisation of ``[lo, hi]`` widened to hold zero (so
    that zero padding is exact); ``s_x`` is NaN for a NaN/Inf bound."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return math.nan, 0
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255 if hi > lo else 1.0
    return scale, int(min(255, max(0, round(-lo / scale))))


def _widen(old: Optional[Tuple[float, float]], lo: float, hi: float):
    """The recorded range ``old`` widened to hold ``[lo, hi]`` (non-finite bounds ignored)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return old
    return (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))


def _range(x: torch.Tensor) -> Tuple[float, float]:
    lo, hi = torch.aminmax(x)
    return lo.item(), hi.item()


def activation_qparams(x: torch.Tensor) -> Tuple[float, int]:
    """:func:`qparams_from_range` of ``x``'s own range (dynamic quantisation)."""
    return qparams_from_range(*_range(x))


def quantize_u8(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """``Q_x = clamp(round(x / s_x) + z_x, 0, 255)`` as a plain uint8 tensor.

    PyTorch's vectorised quantiser (one pass; 5x faster than the same formula in
    elementwise ops), then a view of its bytes (``int_repr()`` would copy them).  That
    quantiser is deprecated: its warning is silenced here, and where it is gone the formula
    runs in plain ops (:func:`quantize_u8_reference`)."""
    if not _HAS_QUANTIZER:
        return quantize_u8_reference(x, scale, zero_point)
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message=r'.*quantize_per_tensor', category=UserWarning)
        q = torch.quantize_per_tensor(x, scale, zero_point, torch.quint8)
    return torch.empty(0, dtype=torch.uint8).set_(q.untyped_storage(), q.storage_offset(),
                                                 q.size(), q.stride())


def quantize_u8_reference(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """The formula of :func:`quantize_u8` in plain elementwise ops."""
    return torch.clamp(torch.round(x / scale) + zero_point, 0, 255).to(torch.uint8)


def _float_linear(x, weight: Int8Weight, bias, act, residual):
    """The dequantised weight on float inputs: for what uint8 cannot hold (NaN/Inf inputs,
    which then reach only their own rows, as in the float model) and empty inputs."""
    out = F.linear(x.float(), weight.dequantize(), None if bias is None else bias.float())
    out = F.silu(out) if act == 'silu' else out
    return out if residual is None else out + residual


def _check(x: torch.Tensor, weight: Int8Weight, act: Optional[str]) -> None:
    if act not in _ACTS:
        raise ValueError(f"act must be None or 'silu', got {act!r}")
    if x.shape[-1] != weight.in_features:
        raise ValueError(f'input has {x.shape[-1]} features, the int8 Linear expects '
                         f'{weight.in_features}')


def int8_linear_reference(x: torch.Tensor, weight: Int8Weight, bias: Optional[torch.Tensor],
                          act: Optional[str] = None,
                          residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The same quantised maths as :func:`int8_linear` with float ops (for tests)."""
    x = x.float()
    scale, zp = weight.input_quantization(x, record=False)
    xq = quantize_u8_reference(x, scale, zp).float()
    out = F.linear((xq - zp) * scale, weight.dequantize(),
                   None if bias is None else bias.float())
    if act == 'silu':
        out = F.silu(out)
    return out if residual is None else out + residual


def _qlinear(xq, scale, zp, weight: Int8Weight, bias, act=None, residual=None,
             out_qparams=None) -> torch.Tensor:
    """oneDNN's int8 matmul on 2-D ``xq``: float32 out, or uint8 at ``out_qparams``."""
    b = None if bias is None else bias.float()
    # a separate add beats the fused one on narrow outputs (S's stage-0 fc2: 3.1 vs 3.9 ms)
    if residual is not None and act is None and weight.out_features >= 64:
        return _ONEDNN.qlinear_pointwise.binary(
            xq, scale, zp, weight.packed, weight.scale, weight.zero_point, residual, b,
            1.0, 0, torch.float32, 1.0, 0, 'add', 1.0, 'none', [], '')   # 'add': out of place
    o_scale, o_zp = out_qparams or (1.0, 0)
    out = _ONEDNN.qlinear_pointwise(xq, scale, zp, weight.packed, weight.scale,
                                    weight.zero_point, b, o_scale, o_zp,
                                    None if out_qparams else torch.float32, _ACTS[act], [], '')
    return out if residual is None else out.add_(residual)


def int8_linear(x: torch.Tensor, weight: Int8Weight, bias: Optional[torch.Tensor],
                act: Optional[str] = None,
                residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``act(x W^T + b) + residual`` with int8 ``W`` and uint8-quantised ``x`` (``act``:
    ``None`` or ``'silu'``; as :func:`enformer_core.ops.fused.linear`, whose int8 branch
    this is).  float32 in and out."""
    _check(x, weight, act)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, weight.in_features).float()
    if x2.shape[0] == 0 or weight.in_features == 0:
        return _float_linear(x, weight, bias, act, residual)
    scale, zp = weight.input_quantization(x2)
    if not HAS_INT8_LINEAR:   # (the range is recorded above when calibrating)
        return int8_linear_reference(x, weight, bias, act, residual)
    if math.isnan(scale):
        return _float_linear(x, weight, bias, act, residual)
    res = None if residual is None else residual.reshape(-1, weight.out_features).float()
    out = _qlinear(quantize_u8(x2.contiguous(), scale, zp), scale, zp, weight, bias, act,
                   None if res is None else res.contiguous())
    return out.view(*lead, weight.out_features)


def static_chain(*weights: Int8Weight) -> bool:
    """Whether consecutive int8 layers can pass uint8 activations from one to the next:
    the kernels are there and every layer has static input quantisation (not recording)."""
    return HAS_INT8_LINEAR and all(w.input_qparams is not None and not w.observing
                                   for w in weights)


def mlp_u8(hq: torch.Tensor, w1: Int8Weight, b1: Optional[torch.Tensor], w2: Int8Weight,
           b2: Optional[torch.Tensor], residual: Optional[torch.Tensor]) -> torch.Tensor:
    """``residual + fc2(silu(fc1(x)))`` on ``hq``: ``x`` already quantised at ``w1``'s static
    input quantisation, ``(rows, K)`` uint8; fc1 writes fc2's uint8 input directly.
    ``residual`` is ``(rows, N)`` or ``None``; float32 ``(rows, N)`` out.

    With a calibrated pre-activation quantisation (``w1.act_qparams``) and the compiled
    kernels, fc1 writes its pre-activation as uint8 and the SiLU is a 256-entry table into
    fc2's input codes (:func:`~enformer_core.ops.native.silu_table`; oneDNN's fused SiLU costs more than the
    matmul on EnFormer-S's narrow layers); otherwise fc1 fuses the SiLU."""
    s1, z1 = w1.input_qparams
    s2, z2 = w2.input_qparams
    if silu_table_applies(w1):
        zq = _qlinear(hq, s1, z1, w1, b1, None, out_qparams=w1.act_qparams)
        h2 = native.lookup_u8(zq, native.silu_table(w1.act_qparams, (s2, z2)))
    else:
        h2 = _qlinear(hq, s1, z1, w1, b1, 'silu', out_qparams=(s2, z2))
    return _qlinear(h2, s2, z2, w2, b2, None,
                    None if residual is None else residual.float().contiguous())


def int8_mlp(x: torch.Tensor, w1: Int8Weight, b1: Optional[torch.Tensor], w2: Int8Weight,
             b2: Optional[torch.Tensor], residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``residual + fc2(silu(fc1(x)))`` in int8.  With static input quantisation on both
    Linears, ``fc1`` writes the SiLU output directly as ``fc2``'s uint8 input (a quarter of
    the bytes of float32, and no quantise pass); otherwise two :func:`int8_linear` calls."""
    _check(x, w1, 'silu')
    if w1.observing:                              # calibrating: record fc1's pre-activation
        z = int8_linear(x, w1, b1)
        w1.observe_preactivation(z)
        return int8_linear(F.silu(z), w2, b2, residual=residual)
    if not static_chain(w1, w2) or x.numel() == 0:
        return int8_linear(int8_linear(x, w1, b1, act='silu'), w2, b2, residual=residual)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, w1.in_features).float().contiguous()
    res = None if residual is None else residual.reshape(-1, w2.out_features)
    out = mlp_u8(quantize_u8(x2, *w1.input_qparams), w1, b1, w2, b2, res)
    return out.view(*lead, w2.out_features)


def silu_table_applies(w1: Int8Weight) -> bool:
    """Whether the static chain's SiLU after ``w1`` is a table (:func:`mlp_u8`)."""
    return w1.act_qparams is not None and native.available()


def int8_mlp_reference(x, w1, b1, w2, b2, residual=None) -> torch.Tensor:
    """:func:`int8_mlp`'s maths with float ops (for tests): where the static chain's SiLU is
    a table, it acts on the quantised pre-activation."""
    if static_chain(w1, w2) and silu_table_applies(w1):
        s, zp = w1.act_qparams
        z = quantize_u8_reference(int8_linear_reference(x, w1, b1), s, zp)
        h = F.silu((z.float() - zp) * s)
    else:
        h = int8_linear_reference(x, w1, b1, act='silu')
    return int8_linear_reference(h, w2, b2, residual=residual)


@contextmanager
def calibrate(weights: Iterable[Int8Weight]) -> Iterator[None]:
    """Within the block, every weight records the range of its inputs; on exit each one
    that saw an input gets static ``input_qparams`` from it (the others stay dynamic)::

        with calibrate(ws):
            for images in batches:
                model(images)
    """
    weights = list(weights)
    for w in weights:
        w.observing, w.observed, w.act_observed = True, None, None
    try:
        yield
    finally:
        for w in weights:
            w.observing = False
            if w.observed is not None:
                w.input_qparams = qparams_from_range(*w.observed)
            if w.act_observed is not None:
                w.act_qparams = qparams_from_range(*w.act_observed)


class Int8Module(nn.Module):
    """What the int8 layers share: the :class:`Int8Weight` as ``weight`` (so model code that
    passes ``module.weight`` on to :mod:`enformer_core.ops.fused` runs the int8 kernel too),
    a float ``bias``, and a state dict that carries the quantised weight and the static input
    quantisation (NaN: dynamic), so a converted model saves and loads like any other."""

    def __init__(self, weight: Int8Weight, bias: Optional[torch.Tensor]):
        super().__init__()
        self.weight = weight
        self.register_buffer('bias', None if bias is None else bias.detach().float().clone())
        self.register_buffer('qweight', weight.qweight)
        self.register_buffer('weight_scale', weight.scale)
        self.register_buffer('input_qparams', torch.full((2,), math.nan))
        self.register_buffer('act_qparams', torch.full((2,), math.nan))
        self.sync_input_qparams()

    def sync_input_qparams(self) -> None:
        """Copy the weight's static input (and pre-activation) quantisation into the
        ``input_qparams`` (``act_qparams``) buffer (done on saving; :func:`calibrate` sets
        them on the weight)."""
        for name in ('input_qparams', 'act_qparams'):
            q = getattr(self.weight, name)
            getattr(self, name).copy_(torch.tensor([math.nan, math.nan] if q is None else q))

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self.sync_input_qparams()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        self.act_qparams.fill_(math.nan)   # (absent from state dicts saved before it existed)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if prefix + 'act_qparams' in missing_keys:
            missing_keys.remove(prefix + 'act_qparams')
        self.weight._set(self.qweight, self.weight_scale)     # pack the loaded weight
        for name in ('input_qparams', 'act_qparams'):
            s, z = getattr(self, name).tolist()
            setattr(self.weight, name, None if math.isnan(s) else (s, int(z)))


class Int8Linear(Int8Module):
    """Drop-in inference replacement of an ``nn.Linear`` (:meth:`from_linear`)."""

    def __init__(self, weight: Int8Weight, bias: Optional[torch.Tensor]):
        super().__init__(weight, bias)
        self.in_features, self.out_features = weight.in_features, weight.out_features

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> 'Int8Linear':
        return cls(Int8Weight(linear.weight), linear.bias)

    def extra_repr(self) -> str:
        return (f'in_features={self.in_features}, out_features={self.out_features}, '
                f'bias={self.bias is not None}, int8 weights, {self.weight.mode} uint8 activations')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.weight, self.bias)
