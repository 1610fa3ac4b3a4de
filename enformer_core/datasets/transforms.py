"""Data transforms (mmcv ``BaseTransform``s) any of the three toolboxes' pipelines can use.

* :class:`GreyToRGB` replicates a single grey channel to three (Fashion-MNIST demo).
* :class:`CheckSegLabels` (after ``LoadAnnotations``) keeps label values that are neither a
  class index (``0 .. num_classes-1`` after ``reduce_zero_label``) nor the ignore index out of
  the loss and the metric: set to the ignore index with a warning naming the file and the
  values (``on_invalid='ignore'``, what the configs use) or rejected with a
  :class:`SegLabelError` (``on_invalid='error'``).  Stock mmseg passes them to the loss, where
  they crash on CPU ("Target 199 is out of bounds") or trip a device-side assert on GPU, and
  its ``IoUMetric`` silently drops them.
"""
from __future__ import annotations

import warnings

import numpy as np
from mmcv.transforms import BaseTransform

from ..registry import TRANSFORMS


@TRANSFORMS.register_module()
class GreyToRGB(BaseTransform):
    """Replicate a grey ``(H, W)`` or ``(H, W, 1)`` image to ``(H, W, 3)``."""

    def transform(self, results: dict) -> dict:
        img = results['img']
        if img.ndim == 2:
            img = img[..., None]
        if img.shape[-1] == 1:
            img = np.ascontiguousarray(np.repeat(img, 3, axis=-1))
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        return results


class SegLabelError(ValueError):
    """A label map holds values that are neither a class index nor the ignore index."""


@TRANSFORMS.register_module()
class CheckSegLabels(BaseTransform):
    """Keep out-of-range label values out of the loss and the metric.

    Args:
        num_classes: number of classes the model predicts; valid labels are
            ``0 .. num_classes-1`` (after ``reduce_zero_label``) and ``ignore_index``.
        ignore_index: the value the loss and ``IoUMetric`` ignore (mmseg: 255).
        on_invalid: ``'ignore'`` sets other values to ``ignore_index`` and warns once per
            file; ``'error'`` raises :class:`SegLabelError` naming the file and the values.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, on_invalid: str = 'ignore'):
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f'num_classes must be a positive int, got {num_classes!r}')
        if on_invalid not in ('ignore', 'error'):
            raise ValueError(f"on_invalid must be 'ignore' or 'error', got {on_invalid!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.on_invalid = on_invalid

    def transform(self, results: dict) -> dict:
        keys = results.get('seg_fields') or (['gt_seg_map'] if 'gt_seg_map' in results else [])
        for key in keys:
            seg = results[key]
            bad = (seg >= self.num_classes) & (seg != self.ignore_index)
            if np.issubdtype(seg.dtype, np.signedinteger):
                bad |= seg < 0
            if not bad.any():
                continue
            values = np.unique(seg[bad])
            where = results.get('seg_map_path', '<in-memory label map>')
            msg = (f'{where}: label values {values[:10].tolist()}'
                   f'{" ..." if len(values) > 10 else ""} in {int(bad.sum())} pixels are '
                   f'outside the {self.num_classes} classes (valid: 0..{self.num_classes - 1} '
                   f'after reduce_zero_label={results.get("reduce_zero_label")}, and '
                   f'{self.ignore_index} = ignore)')
            if self.on_invalid == 'error':
                raise SegLabelError(msg + '; fix the label map or the number of classes')
            warnings.warn(msg + f'; these pixels are set to {self.ignore_index} (ignored)',
                          stacklevel=2)
            seg = seg.copy()
            seg[bad] = self.ignore_index
            results[key] = seg
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(num_classes={self.num_classes}, '
                f'ignore_index={self.ignore_index}, on_invalid={self.on_invalid!r})')
