"""CPU deployment: a model in its fastest inference form for a chosen number format.

::

    from enformer_core import create_model
    from enformer_core.deploy import convert_for_cpu, agreement, logit_error, tune_malloc
    model = create_model('enformer_s', pretrained=CKPT).eval()
    fast = convert_for_cpu(model, dtype='bf16')       # or 'fp32' / 'int8'
    fast8 = convert_for_cpu(model, 'int8', calibration=calib_batches)  # static int8
    with torch.inference_mode():
        logits = fast(images)                          # float32 in, float32 out
    print(logit_error(model, fast, images))            # max / mean |logit - fp32 logit|
    print(agreement(model, fast, val_loader))          # top-1 agreement with fp32 (+ accuracy)
    tune_malloc()   # once per process: large buffers stay in the heap (+10-15 % on one core)

The forms (``docs/benchmarks.md`` has their speed and accuracy effect):

* ``'fp32'``: ``reparameterize()`` (BatchNorms and branches folded into one conv, layer
  scales into their Linears) in eval mode; the fused oneDNN inference paths of the layers do
  the rest.  Outputs equal the eval graph within float rounding.
* ``'bf16'``: the fp32 form with parameters and activations in bfloat16 (oneDNN's AVX-512
  BF16 matmuls); inputs are cast in and outputs back to float32.
* ``'int8'``: the fp32 form whose Linear layers (all but the classifier head and the
  clusterings' centre projections) multiply int8 weights by uint8 activations on oneDNN's
  VNNI kernels (:mod:`enformer_core.ops.quantized`: per-channel weights, per-tensor
  activations, SiLU and residual adds fused).  Activations are quantised dynamically, or
  statically from ranges recorded over ``calibration`` batches; the static form is faster
  and also runs the convolutions in int8 (:mod:`enformer_core.ops.quantized_conv`).  The
  other layers stay in float32, which on CPU is faster than bf16 for them.  Only PyTorch is
  needed;
  samples whose input holds NaN/Inf get NaN outputs, as in fp32 (:class:`NonFiniteRows`).
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Callable, Dict, Iterable, Iterator, List, Optional

import torch
import torch.nn as nn

from .models.layers import LayerScaleLinear, ReparamDWConv
from .ops.quantized import HAS_INT8_LINEAR, Int8Linear, Int8Module, calibrate
from .ops.quantized_conv import HAS_INT8_CONV, Int8Conv2d
from .utils.malloc import tune_malloc

__all__ = ['DTYPES', 'FORM_NAMES', 'CastIO', 'NonFiniteRows', 'agreement',
           'convert_backbone_for_cpu', 'convert_for_cpu', 'convert_named', 'logit_error',
           'recorded_inputs', 'tune_malloc']

DTYPES = ('fp32', 'bf16', 'int8')
#: the names the command-line tools take: ``'int8-static'`` is ``'int8'`` with calibration
FORM_NAMES = DTYPES + ('int8-static',)


class CastIO(nn.Module):
    """Runs ``module`` in ``dtype``: floating inputs are cast in, floating outputs back to
    float32 (so a converted model is a drop-in replacement)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype, form: str):
        super().__init__()
        self.module = module
        self.dtype = dtype
        self.form = form

    def extra_repr(self) -> str:
        return f'form={self.form!r}'

    def forward(self, x: torch.Tensor, *args, **kwargs):
        out = self.module(x.to(self.dtype) if x.is_floating_point() else x, *args, **kwargs)
        return _to_float32(out)


class NonFiniteRows(nn.Module):
    """Runs ``module`` and gives NaN outputs to the samples whose input holds NaN/Inf, as
    the float model does.  Statically quantised int8 layers would otherwise saturate such
    values into finite numbers without a word."""

    def __init__(self, module: nn.Module, form: str):
        super().__init__()
        self.module = module
        self.form = form

    def extra_repr(self) -> str:
        return f'form={self.form!r}'

    def forward(self, x: torch.Tensor, *args, **kwargs):
        out = self.module(x, *args, **kwargs)
        # one summing pass: a NaN/Inf anywhere makes the sum non-finite (so can an overflow
        # of huge finite values, which the per-sample test below then clears)
        if x.is_floating_point() and x.dim() > 1 and x.shape[0] and \
                not math.isfinite(x.sum().item()):
            bad = ~torch.isfinite(x).flatten(1).all(1)
            if bad.any():
                out = _nan_rows(out, bad)
        return out


def _nan_rows(out, bad: torch.Tensor):
    def fill(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point() and t.dim() and t.shape[0] == bad.shape[0]:
            t = t.clone()
            t[bad] = float('nan')
        return t
    return _map_tensors(out, fill)


def _to_float32(out):
    return _map_tensors(out, lambda t: t.float() if t.is_floating_point() else t)


def _map_tensors(out, fn):
    """``fn`` applied to every tensor of a (nested) tuple / list / dict output."""
    if isinstance(out, torch.Tensor):
        return fn(out)
    if isinstance(out, (list, tuple)):
        return type(out)(_map_tensors(o, fn) for o in out)
    if isinstance(out, dict):
        return {k: _map_tensors(v, fn) for k, v in out.items()}
    return out


def _fold(model: nn.Module) -> bool:
    """``reparameterize()`` of the model or of its backbone, where there is one (torch only:
    this module works in the backbone-only install)."""
    for target in (model, getattr(model, 'backbone', None)):
        if isinstance(target, nn.Module) and hasattr(target, 'reparameterize'):
            target.reparameterize()
            return True
    return False


def _swap_modules(parent: nn.Module, convert) -> None:
    """Replace every child for which ``convert(name, child)`` returns a module, searching
    inside the others (but not inside an unfolded :class:`ReparamDWConv`, whose convs are
    branches of one op, not the op)."""
    for name, child in list(parent.named_children()):
        new = convert(name, child)
        if new is not None:
            setattr(parent, name, new)
        elif not isinstance(child, ReparamDWConv):
            _swap_modules(child, convert)


def _quantise_linears_int8(model: nn.Module) -> None:
    """Every ``nn.Linear`` but the classifier head and the centre projections becomes an
    :class:`Int8Linear`.  The head keeps float logits, and the centre
    projections act on a few dozen centres (no speed to gain; the clustering code reads
    their float weights directly)."""
    head = getattr(model, 'head', None)
    head_fc = getattr(head, 'fc', head)
    _swap_modules(model, lambda name, m: Int8Linear.from_linear(m) if (
        type(m) is nn.Linear and m is not head_fc and not name.endswith('centre_proj'))
        else None)


def _quantise_convs_int8(model: nn.Module) -> None:
    """Every plain ``nn.Conv2d`` that :class:`Int8Conv2d` supports, and every folded
    :class:`ReparamDWConv` (one depthwise conv), becomes an :class:`Int8Conv2d`.  Done for
    the static form only: a dynamic conv's range pass over a full-resolution map costs more
    than the int8 kernel saves (``docs/benchmarks.md``)."""
    def convert(name: str, m: nn.Module) -> Optional[nn.Module]:
        if isinstance(m, ReparamDWConv) and m.deploy:
            return Int8Conv2d.from_conv(m.conv)
        if type(m) is nn.Conv2d and Int8Conv2d.supports(m):
            return Int8Conv2d.from_conv(m)
        return None
    _swap_modules(model, convert)


@torch.inference_mode()
def _calibrate_int8(model: nn.Module, batches: Iterable) -> None:
    seen = 0
    with calibrate(m.weight for m in model.modules() if isinstance(m, Int8Module)):
        for batch in batches:
            x, _ = _images_and_labels(batch)
            model(x.float())
            seen += x.shape[0]
    if not seen:
        raise ValueError('calibration gave no images: pass batches of images, or leave '
                         'calibration=None for dynamic int8')


def convert_for_cpu(model: nn.Module, dtype: str = 'bf16', inplace: bool = False,
                    fold: bool = True, calibration: Optional[Iterable] = None) -> nn.Module:
    """The model's CPU inference form in ``dtype`` (``'fp32'``, ``'bf16'`` or ``'int8'``).

    The input model is left untouched unless ``inplace``.  ``fold`` re-parameterises models
    that have a deploy form (EnFormer); others are converted as they are.  The result is in
    eval mode, takes float32 inputs and returns float32 outputs.

    ``calibration`` (int8 only): batches of images (tensors, ``(images, labels)`` pairs or
    mmpretrain dicts, already normalised as the model expects) whose activation ranges fix
    static input quantisation for every int8 layer.  The static form is faster: no range
    passes, the convolutions run in int8 too, and EnFormer's FFN passes uint8 activations
    from its depthwise conv to ``fc2``.  Without it the Linears' activations are quantised
    dynamically, call by call, and the convolutions stay float32.
    """
    if dtype not in DTYPES:
        raise ValueError(f'dtype must be one of {DTYPES}, got {dtype!r}')
    if calibration is not None and dtype != 'int8':
        raise ValueError(f"calibration applies to dtype='int8' only, not {dtype!r}")
    if not inplace:
        model = copy.deepcopy(model)
    model = model.cpu().float().eval()
    if fold:
        _fold(model)
    for p in model.parameters():
        p.requires_grad_(False)
    if dtype == 'fp32':
        return model
    if dtype == 'int8':
        if not HAS_INT8_LINEAR:
            raise RuntimeError("dtype='int8' needs PyTorch's oneDNN int8 kernels "
                               '(torch.ops.onednn.qlinear_pointwise), missing in this build')
        for m in model.modules():  # quantised weights cannot be rescaled on the fly
            if isinstance(m, LayerScaleLinear):
                m.fuse()
        _quantise_linears_int8(model)
        if calibration is not None:
            if HAS_INT8_CONV:
                _quantise_convs_int8(model)
            _calibrate_int8(model, calibration)
        return NonFiniteRows(model, 'int8' if calibration is None else 'int8-static')
    return CastIO(model.to(torch.bfloat16), torch.bfloat16, dtype)


def convert_named(model: nn.Module, name: str, calibration: Optional[Iterable] = None,
                  fold: bool = True) -> nn.Module:
    """:func:`convert_for_cpu` by one of :data:`FORM_NAMES` (the tools' ``--dtype``):
    ``'int8-static'`` needs ``calibration``, the other names ignore it."""
    if name not in FORM_NAMES:
        raise ValueError(f'form must be one of {FORM_NAMES}, got {name!r}')
    if name == 'int8-static':
        if calibration is None:
            raise ValueError("'int8-static' needs calibration batches")
        return convert_for_cpu(model, 'int8', fold=fold, calibration=calibration)
    return convert_for_cpu(model, name, fold=fold)


@contextlib.contextmanager
def recorded_inputs(module: nn.Module,
                    limit: Optional[int] = None) -> Iterator[List[torch.Tensor]]:
    """Collect the image batches ``module`` is called with inside the ``with`` block.

    A detector, segmentor or classifier resizes, normalises and pads an image before its
    backbone sees it; recording the backbone's own inputs while the whole model runs gives
    calibration batches in exactly the backbone's input form, for any task.  Each batch is a
    float32 CPU copy of the first argument; recording stops once ``limit`` images are kept
    (the batch that passes it is kept whole).
    """
    batches: List[torch.Tensor] = []

    def keep(_module, args):
        if args and isinstance(args[0], torch.Tensor) and (
                limit is None or sum(b.shape[0] for b in batches) < limit):
            batches.append(args[0].detach().float().cpu().clone())

    handle = module.register_forward_pre_hook(keep)
    try:
        yield batches
    finally:
        handle.remove()


def convert_backbone_for_cpu(model: nn.Module, form: str,
                             run_calibration: Optional[Callable[[], None]] = None) -> str:
    """Put ``model.backbone`` (of a classifier, detector or segmentor) in the CPU form
    ``form`` (one of :data:`FORM_NAMES`), in place; necks and heads stay as they are.

    ``'int8-static'`` calls ``run_calibration()``, which runs the whole model over
    calibration images while the backbone's inputs are recorded.  It runs in eval mode, with no gradients: a model
    fresh from its config is in training mode, where the images would move BatchNorm
    statistics and draw Gumbel noise; every module's mode is restored afterwards.
    Returns a one-line description for logs.
    """
    if form not in FORM_NAMES:
        raise ValueError(f'form must be one of {FORM_NAMES}, got {form!r}')
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, nn.Module):
        raise ValueError(f'{type(model).__name__} has no backbone to convert')
    device = next(backbone.parameters(), torch.empty(0)).device
    if device.type != 'cpu':
        raise ValueError(f'the {form} form runs on the CPU; the model is on {device} (hide '
                         "the GPUs with CUDA_VISIBLE_DEVICES='' or pass device='cpu')")
    calibration = None
    if form == 'int8-static':
        if run_calibration is None:
            raise ValueError("'int8-static' needs calibration: pass run_calibration")
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with recorded_inputs(backbone) as calibration, torch.no_grad():
                run_calibration()
        finally:
            for m, training in modes:
                m.training = training
        if not calibration:
            raise ValueError('the calibration run never called the backbone: no images?')
    model.backbone = convert_named(backbone, form, calibration)
    if form != 'int8-static':
        return f'backbone in its {form} CPU form'
    shapes = sorted({'x'.join(map(str, b.shape[2:])) for b in calibration})
    n = sum(b.shape[0] for b in calibration)
    sizes = ', '.join(shapes[:4]) + (', ...' if len(shapes) > 4 else '')
    return (f'backbone in its int8-static CPU form, calibrated on {n} image'
            f'{"s" if n != 1 else ""} ({sizes})')


@torch.inference_mode()
def logit_error(reference: nn.Module, model: nn.Module, x: torch.Tensor) -> Dict[str, float]:
    """Max and mean ``|model(x) - reference(x)|`` and the max relative to the largest
    reference value, on one batch; plus the top-1 agreement when the output is one
    ``(batch, classes)`` tensor.  Several outputs (a dense backbone's feature maps) are
    compared all together."""
    ref_out, out_out = reference.eval()(x), model.eval()(x)
    ref, out = _flat_outputs(ref_out), _flat_outputs(out_out)
    diff = (out - ref).abs()
    res = dict(max_abs=diff.max().item(), mean_abs=diff.mean().item(),
               max_rel=(diff.max() / ref.abs().max().clamp_min(1e-12)).item())
    if isinstance(ref_out, torch.Tensor) and ref_out.dim() == 2:
        res['top1_agreement'] = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()
    return res


def _flat_outputs(out) -> torch.Tensor:
    """Every tensor of a (nested) output, float32, as ``(batch, -1)`` columns side by side."""
    parts = []
    _map_tensors(out, lambda t: parts.append(t.float().reshape(t.shape[0], -1)))
    return torch.cat(parts, 1)


def _images_and_labels(batch):
    """``(images, labels or None)`` from a loader batch: a tensor, an ``(x, y)`` pair, or an
    mmpretrain-style dict with ``inputs`` (and ``data_samples`` with ``gt_label``)."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, dict):
        x = batch['inputs']
        x = torch.stack(list(x)) if isinstance(x, (list, tuple)) else x
        samples = batch.get('data_samples')
        y = None if not samples else torch.cat([s.gt_label for s in samples])
        return x, y
    return batch[0], (batch[1] if len(batch) > 1 else None)


@torch.inference_mode()
def agreement(model_fp32: nn.Module, model_x: nn.Module, loader: Iterable,
              max_batches: Optional[int] = None,
              preprocess=None) -> Dict[str, float]:
    """Top-1 agreement of ``model_x`` with ``model_fp32`` over ``loader`` (and each model's
    accuracy when the batches carry labels), plus the max/mean logit difference.

    ``preprocess``: optional callable applied to the images of each batch (for example the
    data preprocessor's normalisation when the loader yields raw uint8 images).
    """
    model_fp32.eval()
    model_x.eval()
    n = agree = right_ref = right_x = 0
    max_abs, sum_abs, labelled = 0.0, 0.0, True
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x, y = _images_and_labels(batch)
        x = x.float() if preprocess is None else preprocess(x)
        ref, out = model_fp32(x).float(), model_x(x).float()
        p_ref, p_x = ref.argmax(-1), out.argmax(-1)
        n += x.shape[0]
        agree += (p_ref == p_x).sum().item()
        diff = (out - ref).abs()
        max_abs = max(max_abs, diff.max().item())
        sum_abs += diff.mean(-1).sum().item()
        if y is None:
            labelled = False
        else:
            y = y.view(-1).to(p_ref.device)
            right_ref += (p_ref == y).sum().item()
            right_x += (p_x == y).sum().item()
    res = dict(images=n, top1_agreement=agree / max(n, 1), max_abs_logit_diff=max_abs,
               mean_abs_logit_diff=sum_abs / max(n, 1))
    if labelled and n:
        res.update(top1_fp32=right_ref / n, top1_x=right_x / n)
    return res
