"""mmseg datasets: the generated textured-shapes dataset in ADE20K layout.

The test-time resize of the published code (``AlignResize``: keep ratio with short side 512,
then resize so that both sides are multiples of 32, rounding up) needs no extra transform:
it is mmseg's ``Resize(scale=(2048, 512), keep_ratio=True)`` followed by
``ResizeToMultiple(size_divisor=32)`` (``mmcv.imresize_to_multiple`` rounds up, bilinear).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from mmseg.datasets import BaseSegDataset

from ..registry import DATASETS
from .shapes_ade import read_meta


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
