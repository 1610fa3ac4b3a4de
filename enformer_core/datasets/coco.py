"""mmdet's ``CocoDataset`` with a check of the annotation file (``detection/configs``).

``ValidatedCocoDataset`` is mmdet's ``CocoDataset`` plus a check of the annotation file:
a truncated/corrupt json, a file that is not COCO instance format, annotations pointing at
unknown images or categories, or a file whose category names share nothing with the config's
``metainfo['classes']`` raise :class:`CocoAnnotationError` naming the file and the problem
(stock mmdet gives a bare ``JSONDecodeError``/``KeyError`` or silently trains on nothing).
On a valid file it behaves exactly like ``CocoDataset``.
"""
from __future__ import annotations

import json
from typing import List

from mmdet.datasets import CocoDataset
from mmdet.datasets.api_wrappers import COCO

from ..registry import DATASETS


_ANN_KEYS = {'id', 'image_id', 'category_id', 'bbox', 'area'}


class CocoAnnotationError(ValueError):
    """The annotation file cannot be used as a COCO instance-segmentation file."""


def check_coco_dict(dataset, source: str = 'annotation file') -> None:
    """Raise :class:`CocoAnnotationError` if ``dataset`` is not COCO instance format."""
    if not isinstance(dataset, dict):
        raise CocoAnnotationError(f'{source}: top level must be a JSON object with "images", '
                                  f'"annotations" and "categories", got {type(dataset).__name__}')
    missing = [k for k in ('images', 'annotations', 'categories') if k not in dataset]
    if missing:
        raise CocoAnnotationError(f'{source}: missing top-level key(s) {missing}; a COCO '
                                  f'instance file has "images", "annotations", "categories"')
    for key in ('images', 'annotations', 'categories'):
        if not isinstance(dataset[key], list):
            raise CocoAnnotationError(f'{source}: "{key}" must be a list, got '
                                      f'{type(dataset[key]).__name__}')
    image_ids = set()
    for i, img in enumerate(dataset['images']):
        if not isinstance(img, dict) or not {'id', 'file_name', 'height', 'width'} <= set(img):
            raise CocoAnnotationError(f'{source}: images[{i}] needs "id", "file_name", '
                                      f'"height", "width", got {img!r:.200}')
        image_ids.add(img['id'])
    cat_ids = set()
    for i, cat in enumerate(dataset['categories']):
        if not isinstance(cat, dict) or not {'id', 'name'} <= set(cat):
            raise CocoAnnotationError(f'{source}: categories[{i}] needs "id" and "name", '
                                      f'got {cat!r:.200}')
        cat_ids.add(cat['id'])
    for i, ann in enumerate(dataset['annotations']):
        if not isinstance(ann, dict) or not _ANN_KEYS <= set(ann):
            raise CocoAnnotationError(f'{source}: annotations[{i}] needs keys '
                                      f'{sorted(_ANN_KEYS)}, got {ann!r:.200}')
        if ann['image_id'] not in image_ids:
            raise CocoAnnotationError(f'{source}: annotations[{i}] (id {ann["id"]}) refers to '
                                      f'image_id {ann["image_id"]}, which is not in "images"')
        if ann['category_id'] not in cat_ids:
            raise CocoAnnotationError(f'{source}: annotations[{i}] (id {ann["id"]}) refers to '
                                      f'category_id {ann["category_id"]}, which is not in '
                                      f'"categories"')
        bbox = ann['bbox']
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise CocoAnnotationError(f'{source}: annotations[{i}] (id {ann["id"]}) bbox must '
                                      f'be [x, y, w, h], got {bbox!r:.100}')


class _CheckedCOCO(COCO):
    """mmdet's COCO wrapper that validates the loaded dict before indexing it."""

    def createIndex(self):  # noqa: N802 (pycocotools name)
        check_coco_dict(self.dataset, getattr(self, '_source', 'annotation file'))
        super().createIndex()


@DATASETS.register_module()
class ValidatedCocoDataset(CocoDataset):
    """``CocoDataset`` whose annotation-file problems raise :class:`CocoAnnotationError`."""

    COCOAPI = _CheckedCOCO

    def load_data_list(self) -> List[dict]:
        source = f'annotation file {self.ann_file!r}'
        _CheckedCOCO._source = source
        try:
            data_list = super().load_data_list()
        except json.JSONDecodeError as exc:
            raise CocoAnnotationError(f'{source} is not valid JSON ({exc}); the file is '
                                      f'truncated or corrupt: re-download or regenerate it'
                                      ) from exc
        except AssertionError as exc:  # pycocotools / mmdet format asserts
            raise CocoAnnotationError(f'{source}: {exc}') from exc
        except UnicodeDecodeError as exc:
            raise CocoAnnotationError(f'{source} is not a UTF-8 JSON text file ({exc})'
                                      ) from exc
        classes = self.metainfo.get('classes') or ()
        if classes and not self.cat_ids:
            raise CocoAnnotationError(
                f'{source}: none of the config classes {tuple(classes)[:10]} is a category '
                f'name in the file; set metainfo=dict(classes=...) in the dataset config to '
                f'the file\'s category names')
        return data_list


__all__ = ['CocoAnnotationError', 'ValidatedCocoDataset', 'check_coco_dict']
