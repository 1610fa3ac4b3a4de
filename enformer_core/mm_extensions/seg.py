"""mmseg extras used by ``segmentation/configs``.

* ``CheckSegLabels`` (transform, after ``LoadAnnotations``): label values that are neither a
  class index (``0 .. num_classes-1`` after ``reduce_zero_label``) nor the ignore index are
  either set to the ignore index with a warning naming the file and the values
  (``on_invalid='ignore'``, what the configs use), or rejected with a
  :class:`SegLabelError` (``on_invalid='error'``).  Stock mmseg passes such values to the
  loss, where they crash on CPU ("Target 199 is out of bounds") or trip a device-side
  assert on GPU, and its ``IoUMetric`` silently drops them.
* ``ShapesADEDataset``: the generated textured-shapes dataset
  (:mod:`enformer_core.data.shapes_ade`) in ADE20K layout; classes and palette come from the
  ``meta.json`` the generator writes, ``reduce_zero_label=True``.

The test-time resize of the published code (``AlignResize``: keep ratio with short side 512,
then resize so that both sides are multiples of 32, rounding up) needs no extra transform:
it is mmseg's ``Resize(scale=(2048, 512), keep_ratio=True)`` followed by
``ResizeToMultiple(size_divisor=32)`` (``mmcv.imresize_to_multiple`` rounds up, bilinear).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS, TRANSFORMS


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


@DATASETS.register_module()
class ShapesADEDataset(BaseSegDataset):
    """The generated textured-shapes dataset (``tools/data/make_shapes_ade.py``).

    ADE20K layout and label convention (``images/{training,validation}/*.jpg``,
    ``annotations/...png``, 0 = background, ``reduce_zero_label=True``); the class names and
    palette are read from ``data_root/meta.json`` unless ``metainfo`` gives them.
    """

    METAINFO: dict = dict()

    def __init__(self, data_root: str = '', metainfo: Optional[dict] = None,
                 img_suffix: str = '.jpg', seg_map_suffix: str = '.png',
                 reduce_zero_label: bool = True, **kwargs):
        from ..data.shapes_ade import read_meta
        if metainfo is None or 'classes' not in metainfo:
            meta = read_meta(data_root)
            if meta is None:
                root = data_root or 'data/generated/shapes_ade'
                raise FileNotFoundError(
                    f'{Path(data_root) / "meta.json"} not found: generate the dataset first '
                    f'(python tools/data/make_shapes_ade.py {root})')
            metainfo = dict(metainfo or {}, classes=tuple(meta['classes']),
                            palette=[list(p) for p in meta['palette']])
        super().__init__(data_root=data_root, metainfo=metainfo, img_suffix=img_suffix,
                         seg_map_suffix=seg_map_suffix, reduce_zero_label=reduce_zero_label,
                         **kwargs)
