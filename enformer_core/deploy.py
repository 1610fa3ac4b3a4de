"""CPU deployment: a model in its fastest inference form for a chosen number format.

::

    from enformer_core import create_model
    from enformer_core.deploy import convert_for_cpu, agreement, logit_error, tune_malloc
    model = create_model('enformer_s', pretrained=CKPT).eval()
    fast = convert_for_cpu(model, dtype='bf16')       # or 'fp32' / 'int8'
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
* ``'int8'``: the bf16 form whose Linear layers (all but the classifier head) run with int8
  weights and dynamically quantised int8 activations (torchao's
  ``Int8DynamicActivationInt8WeightConfig``, per-channel weights, per-token activations).
  Needs the ``deploy`` extra (``pip install torchao``).
"""
from __future__ import annotations

import copy
from typing import Dict, Iterable, Optional

import torch
import torch.nn as nn

from .models.layers import LayerScaleLinear
from .utils.malloc import tune_malloc

__all__ = ['DTYPES', 'CastIO', 'agreement', 'convert_for_cpu', 'logit_error', 'tune_malloc']

DTYPES = ('fp32', 'bf16', 'int8')


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


def _to_float32(out):
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float32(o) for o in out)
    if isinstance(out, dict):
        return {k: _to_float32(v) for k, v in out.items()}
    return out


def _fold(model: nn.Module) -> bool:
    """``reparameterize()`` of the model or of its backbone, where there is one (torch only:
    this module works in the backbone-only install)."""
    for target in (model, getattr(model, 'backbone', None)):
        if isinstance(target, nn.Module) and hasattr(target, 'reparameterize'):
            target.reparameterize()
            return True
    return False


def _quantise_linears_int8(model: nn.Module) -> int:
    """torchao dynamic int8 on every Linear but the classifier head; returns the count."""
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("dtype='int8' needs torchao: pip install torchao "
                          "(or pip install 'enformer_core[deploy]')") from e
    head = getattr(model, 'head', None)
    head_fc = getattr(head, 'fc', head)
    def chosen(m: nn.Module, fqn: str = '') -> bool:
        return isinstance(m, nn.Linear) and m is not head_fc

    count = sum(chosen(m) for m in model.modules())
    quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=chosen)
    return count


def convert_for_cpu(model: nn.Module, dtype: str = 'bf16', inplace: bool = False,
                    fold: bool = True) -> nn.Module:
    """The model's CPU inference form in ``dtype`` (``'fp32'``, ``'bf16'`` or ``'int8'``).

    The input model is left untouched unless ``inplace``.  ``fold`` re-parameterises models
    that have a deploy form (EnFormer); others are converted as they are.  The result is in
    eval mode, takes float32 inputs and returns float32 outputs.
    """
    if dtype not in DTYPES:
        raise ValueError(f'dtype must be one of {DTYPES}, got {dtype!r}')
    if not inplace:
        model = copy.deepcopy(model)
    model = model.cpu().float().eval()
    if fold:
        _fold(model)
    for p in model.parameters():
        p.requires_grad_(False)
    if dtype == 'fp32':
        return model
    model = model.to(torch.bfloat16)
    if dtype == 'int8':
        for m in model.modules():  # quantised weights cannot be rescaled on the fly
            if isinstance(m, LayerScaleLinear):
                m.fuse()
        _quantise_linears_int8(model)
    return CastIO(model, torch.bfloat16, dtype)


@torch.inference_mode()
def logit_error(reference: nn.Module, model: nn.Module, x: torch.Tensor) -> Dict[str, float]:
    """Max and mean ``|model(x) - reference(x)|`` and the max relative to the largest
    reference logit, on one batch."""
    ref = reference.eval()(x).float()
    out = model.eval()(x).float()
    diff = (out - ref).abs()
    return dict(max_abs=diff.max().item(), mean_abs=diff.mean().item(),
                max_rel=(diff.max() / ref.abs().max().clamp_min(1e-12)).item(),
                top1_agreement=(out.argmax(-1) == ref.argmax(-1)).float().mean().item())


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
