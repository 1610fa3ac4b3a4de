"""CPU deployment: a model in its fastest inference form for a chosen number format.

::

    from enformer_core import create_model
    from enformer_core.deploy import convert_for_cpu, agreement, logit_error, tune_malloc
    model = create_model('enformer_s', pretrained=CKPT).eval()
    fast = convert_for_cpu(model, dtype='bf16')       # or 'fp32' / 'int8'
    fast8 = convert_for_cpu(model, 'int8', calibration=calib_batches)  # static int8
    # (keep_float=['backbone.stem.conv1']: named layers stay float32)
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
import fnmatch
import math
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence

import torch
import torch.nn as nn

from .fidelity import agreement, images_and_labels, logit_error, map_tensors
from .models.layers import LayerScaleLinear, ReparamDWConv
from .ops.quantized import HAS_INT8_LINEAR, Int8Linear, Int8Module, calibrate
from .ops.quantized_conv import HAS_INT8_CONV, Int8Conv2d
from .utils.malloc import tune_malloc

__all__ = ['DTYPES', 'FORM_NAMES', 'INT8_FORMS', 'CastIO', 'KeepFloat', 'NonFiniteRows', 'agreement',
           'convert_backbone_for_cpu', 'convert_for_cpu', 'convert_named', 'int8_layer_names',
           'keep_float_sensitivity', 'layer_groups', 'logit_error', 'recorded_inputs',
           'tune_malloc']

DTYPES = ('fp32', 'bf16', 'int8')
#: the names the command-line tools take: ``'int8-static'`` is ``'int8'`` with calibration
FORM_NAMES = DTYPES + ('int8-static',)
#: the forms with int8 layers (those ``keep_float`` applies to)
INT8_FORMS = ('int8', 'int8-static')


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
    return map_tensors(out, fill)


def _to_float32(out):
    return map_tensors(out, lambda t: t.float() if t.is_floating_point() else t)


def _fold(model: nn.Module) -> bool:
    """``reparameterize()`` of the model or of its backbone, where there is one (torch only:
    this module works in the backbone-only install)."""
    for target in (model, getattr(model, 'backbone', None)):
        if isinstance(target, nn.Module) and hasattr(target, 'reparameterize'):
            target.reparameterize()
            return True
    return False


class KeepFloat:
    """Module-name patterns (``fnmatch``, names relative to the converted model, e.g.
    ``'stem.conv1'``, ``'stages.0.*'``) whose layers stay float in an int8 form.  A pattern
    that names a container keeps everything inside it float.  A pattern that matches no
    layer the form would make int8 is an error naming the ones it could match."""

    def __init__(self, patterns: Sequence[str] = ()):
        if isinstance(patterns, str):
            patterns = [patterns]
        self.patterns = list(patterns)
        self.used: set = set()
        self.candidates: List[str] = []   # the layers the form makes int8 (for the error)

    def __call__(self, name: str) -> bool:
        """Does a pattern name this layer or a module it is inside?"""
        parts = name.split('.')
        scopes = ['.'.join(parts[:i]) for i in range(1, len(parts) + 1)]
        hits = [p for p in self.patterns if any(fnmatch.fnmatchcase(q, p) for q in scopes)]
        self.used.update(hits)
        return bool(hits)

    def check(self) -> None:
        unused = [p for p in self.patterns if p not in self.used]
        if unused:
            names = self.candidates
            raise ValueError(
                f'keep_float: {unused} match no layer that this form makes int8; its '
                f'{len(names)} int8 layers are named like '
                f'{", ".join(names[:3])}{", ..." if len(names) > 3 else ""}'
                + (f', {names[-1]}' if len(names) > 3 else ''))


def _swap_modules(parent: nn.Module, convert, keep: Optional[KeepFloat] = None,
                  prefix: str = '') -> None:
    """Replace every child for which ``convert(name, child)`` returns a module, searching
    inside the others (but not inside an unfolded :class:`ReparamDWConv`, whose convs are
    branches of one op, not the op).  Children that ``keep`` names stay as they are."""
    for name, child in list(parent.named_children()):
        full = prefix + name
        new = convert(name, child)
        if new is not None:
            if keep is not None:
                keep.candidates.append(full)
                if keep(full):
                    continue
            setattr(parent, name, new)
        elif not isinstance(child, ReparamDWConv):
            _swap_modules(child, convert, keep, full + '.')


def _quantise_linears_int8(model: nn.Module, keep: Optional[KeepFloat] = None) -> None:
    """Every ``nn.Linear`` but the classifier head and the centre projections becomes an
    :class:`Int8Linear`.  The head keeps float logits, and the centre
    projections act on a few dozen centres (no speed to gain; the clustering code reads
    their float weights directly)."""
    head = getattr(model, 'head', None)
    head_fc = getattr(head, 'fc', head)
    _swap_modules(model, lambda name, m: Int8Linear.from_linear(m) if (
        type(m) is nn.Linear and m is not head_fc and not name.endswith('centre_proj'))
        else None, keep)


def _quantise_convs_int8(model: nn.Module, keep: Optional[KeepFloat] = None) -> None:
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
    _swap_modules(model, convert, keep)


@torch.inference_mode()
def _calibrate_int8(model: nn.Module, batches: Iterable) -> None:
    seen = 0
    with calibrate(m.weight for m in model.modules() if isinstance(m, Int8Module)):
        for batch in batches:
            x, _ = images_and_labels(batch)
            model(x.float())
            seen += x.shape[0]
    if not seen:
        raise ValueError('calibration gave no images: pass batches of images, or leave '
                         'calibration=None for dynamic int8')


def convert_for_cpu(model: nn.Module, dtype: str = 'bf16', inplace: bool = False,
                    fold: bool = True, calibration: Optional[Iterable] = None,
                    keep_float: Sequence[str] = ()) -> nn.Module:
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

    ``keep_float`` (int8 only): module-name patterns whose layers stay float32, to buy back
    accuracy where one layer costs much of it (:class:`KeepFloat`; ``docs/inference.md``).
    """
    if dtype not in DTYPES:
        raise ValueError(f'dtype must be one of {DTYPES}, got {dtype!r}')
    if calibration is not None and dtype != 'int8':
        raise ValueError(f"calibration applies to dtype='int8' only, not {dtype!r}")
    if keep_float and dtype != 'int8':
        raise ValueError(f"keep_float applies to dtype='int8' only, not {dtype!r}")
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
        keep = KeepFloat(keep_float)
        _quantise_linears_int8(model, keep)
        if calibration is not None and HAS_INT8_CONV:
            _quantise_convs_int8(model, keep)
        keep.check()
        if calibration is not None:
            _calibrate_int8(model, calibration)
        return NonFiniteRows(model, 'int8' if calibration is None else 'int8-static')
    return CastIO(model.to(torch.bfloat16), torch.bfloat16, dtype)


def int8_layer_names(converted: nn.Module) -> List[str]:
    """Names of the int8 layers of a converted model, as ``keep_float`` takes them (relative
    to the model that was converted)."""
    inner = converted.module if isinstance(converted, (NonFiniteRows, CastIO)) else converted
    return [n for n, m in inner.named_modules() if isinstance(m, Int8Module)]


def layer_groups(names: Sequence[str]) -> List[str]:
    """One ``keep_float`` pattern per role: block and stage indices become ``*``
    (``stages.2.blocks.5.ffn.fc1`` -> ``stages.*.blocks.*.ffn.fc1``), in first-seen order."""
    groups: List[str] = []
    for name in names:
        g = '.'.join('*' if part.isdigit() else part for part in name.split('.'))
        if g not in groups:
            groups.append(g)
    return groups


def keep_float_sensitivity(model: nn.Module, x: torch.Tensor,
                           calibration: Optional[Iterable] = None,
                           patterns: Optional[Sequence[str]] = None) -> List[Dict]:
    """What keeping each group of layers float buys back in the int8 form (static with
    ``calibration``, else dynamic): for every pattern (default: :func:`layer_groups` of the
    int8 layers), the logit error on ``x`` of the form with that group float, best first (by
    the mean error: the max over one batch is a noisy ranking).  The first row,
    ``pattern=None``, is the form with every layer int8."""
    calibration = None if calibration is None else list(calibration)
    base = convert_for_cpu(model, 'int8', calibration=calibration)
    names = int8_layer_names(base)
    rows = [dict(pattern=None, layers=0, **logit_error(model, base, x))]
    for pattern in patterns or layer_groups(names):
        keep = KeepFloat([pattern])
        form = convert_for_cpu(model, 'int8', calibration=calibration, keep_float=[pattern])
        rows.append(dict(pattern=pattern, layers=sum(keep(n) for n in names),
                         **logit_error(model, form, x)))
    return rows[:1] + sorted(rows[1:], key=lambda r: r['mean_abs'])


def convert_named(model: nn.Module, name: str, calibration: Optional[Iterable] = None,
                  fold: bool = True, keep_float: Sequence[str] = ()) -> nn.Module:
    """:func:`convert_for_cpu` by one of :data:`FORM_NAMES` (the tools' ``--dtype``):
    ``'int8-static'`` needs ``calibration``, the other names ignore it."""
    if name not in FORM_NAMES:
        raise ValueError(f'form must be one of {FORM_NAMES}, got {name!r}')
    if name == 'int8-static':
        if calibration is None:
            raise ValueError("'int8-static' needs calibration batches")
        return convert_for_cpu(model, 'int8', fold=fold, calibration=calibration,
                               keep_float=keep_float)
    return convert_for_cpu(model, name, fold=fold, keep_float=keep_float)


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
                             run_calibration: Optional[Callable[[], None]] = None,
                             keep_float: Sequence[str] = ()) -> str:
    """Put ``model.backbone`` (of a classifier, detector or segmentor) in the CPU form
    ``form`` (one of :data:`FORM_NAMES`), in place; necks and heads stay as they are.

    ``'int8-static'`` calls ``run_calibration()``, which runs the whole model over
    calibration images while the backbone's inputs are recorded.  It runs in eval mode,
    with no gradients: a model fresh from its config is in training mode, where the images
    would move BatchNorm statistics and draw Gumbel noise; every module's mode is restored
    afterwards.
    ``keep_float``: backbone module-name patterns that stay float in the int8 forms.
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
    model.backbone = convert_named(backbone, form, calibration, keep_float=keep_float)
    kept = f'; kept float: {", ".join(keep_float)}' if keep_float else ''
    if form != 'int8-static':
        return f'backbone in its {form} CPU form{kept}'
    shapes = sorted({'x'.join(map(str, b.shape[2:])) for b in calibration})
    n = sum(b.shape[0] for b in calibration)
    sizes = ', '.join(shapes[:4]) + (', ...' if len(shapes) > 4 else '')
    return (f'backbone in its int8-static CPU form, calibrated on {n} image'
            f'{"s" if n != 1 else ""} ({sizes}){kept}')
