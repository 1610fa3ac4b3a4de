"""How close a CPU deployment form stays to the fp32 model: the logit error on one batch
and the top-1 agreement over a loader (:mod:`enformer_core.deploy` re-exports both)::

    from enformer_core.deploy import agreement, logit_error
    print(logit_error(model, fast, images))            # max / mean |logit - fp32 logit|
    print(agreement(model, fast, val_loader))          # top-1 agreement with fp32 (+ accuracy)
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch
import torch.nn as nn


def map_tensors(out, fn):
    """``fn`` applied to every tensor of a (nested) tuple / list / dict output."""
    if isinstance(out, torch.Tensor):
        return fn(out)
    if isinstance(out, (list, tuple)):
        return type(out)(map_tensors(o, fn) for o in out)
    if isinstance(out, dict):
        return {k: map_tensors(v, fn) for k, v in out.items()}
    return out


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
    map_tensors(out, lambda t: parts.append(t.float().reshape(t.shape[0], -1)))
    return torch.cat(parts, 1)


def images_and_labels(batch):
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
        x, y = images_and_labels(batch)
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
