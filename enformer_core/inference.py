"""One image (or a folder) in, a prediction out, in each task.

    >>> from enformer_core.inference import infer
    >>> results = infer('detection/configs/demo/mask-rcnn_enformer-s_fpn_shapes-demo.py',
    ...                 'work_dirs/.../epoch_20.pth', ['photo.jpg'], out_dir='out/')

The task comes from the config's ``default_scope``: mmpretrain's
``ImageClassificationInferencer``, mmdet's ``DetInferencer`` or mmseg's ``MMSegInferencer``
runs the config's test pipeline and model.  The weights (``'none'`` for a random
initialisation, a path or a URL, in our layout or a published one) are loaded by
:func:`enformer_core.checkpoint.load_checkpoint`, strictly, into the inferencer's model;
the inferencer never reads them itself.  Images are decoded by
:func:`enformer_core.datasets.load_image` exactly as the pipelines' ``LoadImageFromFile``
does (OpenCV, EXIF orientation applied) and handed over as arrays.

Each result is a JSON-ready dict (``image``, ``task``, ``height``, ``width`` and the task's
fields, see ``docs/inference.md``); with ``out_dir`` every image also gets ``<name>.json`` and
``<name>.png`` (top-5 labels / boxes and masks / a class overlay, at the image's size;
segmentation also ``<name>_labels.png``, the class index per pixel).
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .checkpoint import check_finite, load_checkpoint, torch_load, unwrap_state_dict
from .analysis.loading import strip_pretrained
from .datasets import shapes_ade
from .datasets.images import list_images, load_image
from .hub import label_names, resolve_file
from .deploy import INT8_FORMS, convert_backbone_for_cpu
from .utils.launch import load_config

TASKS = {'mmpretrain': 'classification', 'mmcls': 'classification', 'mmdet': 'detection',
         'mmseg': 'segmentation'}
#: transforms of a test pipeline that need annotations (an image alone has none)
_NEEDS_LABELS = ('LoadAnnotations', 'CheckSegLabels', 'LoadDepthAnnotation')
#: autocast dtypes, and ``'int8'`` / ``'int8-static'``: the backbone in an int8 CPU form
DTYPES = {'float32': None, 'bfloat16': torch.bfloat16, 'float16': torch.float16, 'int8': None,
          'int8-static': None}


def output_name(spec: str) -> str:
    """The file stem of an image spec (``fashion-mnist:12`` -> ``fashion-mnist_12``)."""
    base = os.path.splitext(os.path.basename(spec))[0] if os.sep in spec or '.' in spec \
        else spec
    return re.sub(r'[^\w.-]+', '_', base) or 'image'


class Predictor:
    """A config's model in its toolbox's inferencer, with our weights and class names.

    Args:
        config: config file of any task (or an ``mmengine.Config``).
        checkpoint: ``'none'``/``None`` (random initialisation, ``init_weights()``), a path or
            a URL, our layout or a published one; loaded strictly.
        device: ``'cpu'``, ``'cuda'``, ...
        dtype: ``'float32'`` (default), ``'bfloat16'`` or ``'float16'`` (autocast), or
            ``'int8'`` (CPU: the backbone's Linears on oneDNN's int8 kernels, dynamic
            activation quantisation; heads stay float32), or ``'int8-static'`` (CPU: the
            faster static form, Linears and convs in int8, its activation ranges recorded
            while the model runs on ``calibration``).
        score_thr: detections drawn from this score on (all are in the JSON).
        topk: labels reported per image (classification).
        cfg_options: ``{key: value}`` merged into the config first.
        seed: seed of the random initialisation (``checkpoint='none'``); the global RNG
            state is left as it was.
        calibration: ``dtype='int8-static'`` only: image specs (as for ``__call__``) like
            the ones to be served; values outside their ranges saturate.
        keep_float: int8 forms: backbone layers that stay float (module-name patterns,
            :class:`~enformer_core.deploy.KeepFloat`).
    """

    def __init__(self, config, checkpoint: Optional[str] = 'none', device: str = 'cpu',
                 dtype: Optional[str] = None, score_thr: float = 0.3, topk: int = 5,
                 cfg_options: Optional[dict] = None, seed: int = 0,
                 calibration: Optional[Sequence[str]] = None,
                 keep_float: Sequence[str] = ()):
        try:
            from mmengine.config import Config
        except ImportError:
            raise ImportError("inference from a config needs the OpenMMLab stack: pip install "
                              "'enformer_core[mm]' (mmcv with compiled ops: tools/setup_env.sh)"
                              ) from None
        if isinstance(config, Config):
            cfg = copy.deepcopy(config)
            cfg.merge_from_dict(cfg_options or {})
        else:  # checks the enformer_core import and the toolbox scope, as the launchers do
            cfg = load_config(config, cfg_options)
        scope = cfg.get('default_scope')
        if scope not in TASKS:
            raise ValueError(f'config {getattr(cfg, "filename", config)} has default_scope '
                             f'{scope!r}; expected one of {sorted(set(TASKS))}')
        if (dtype or 'float32') not in DTYPES:
            raise ValueError(f'dtype must be one of {list(DTYPES)}, got {dtype!r}')
        if dtype in INT8_FORMS and torch.device(device).type != 'cpu':
            raise ValueError(f"dtype={dtype!r} runs on the CPU (oneDNN's int8 kernels), not on "
                             f'{device!r}')
        if dtype == 'int8-static' and not calibration:
            raise ValueError("dtype='int8-static' needs calibration images (like the ones "
                             'to be served)')
        if calibration and dtype != 'int8-static':
            raise ValueError(f"calibration images apply to dtype='int8-static' only, not "
                             f'{dtype!r}')
        if keep_float and dtype not in INT8_FORMS:
            raise ValueError(f'keep_float applies to the int8 forms, not dtype={dtype!r}')
        self.task, self.cfg, self.device = TASKS[scope], cfg, device
        self.config_name = os.path.basename(getattr(cfg, 'filename', None) or 'config')
        self.dtype, self.score_thr, self.topk = DTYPES[dtype or 'float32'], score_thr, topk
        strip_pretrained(cfg.model)  # the weights are loaded below, not by init_cfg
        pipeline = cfg.test_dataloader.dataset.pipeline
        pipeline[:] = [t for t in pipeline if t.get('type') not in _NEEDS_LABELS]
        self.checkpoint = str(checkpoint) if checkpoint else 'none'
        meta: dict = {}
        from mmengine.registry import init_default_scope
        init_default_scope(scope)  # the toolbox's registries build the pipeline and model
        self.scope = scope
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # a random initialisation is the same on every run
            self.inferencer = self._build(cfg, device)
            self.model = self.inferencer.model
            if self.checkpoint.lower() == 'none':
                with _quiet_mmengine():  # init_weights logs a line per parameter
                    self.model.init_weights()
        if self.checkpoint.lower() == 'none':
            self.report = None
        else:
            self.report, meta = load_weights(self.model, self.checkpoint)
        self.model.to(device).eval()
        self.classes, self.palette, self.classes_from = self._class_names(meta)
        self.model.dataset_meta = dict(classes=tuple(self.classes), palette=self.palette)
        self.form = None  #: the backbone's CPU form, described (``None``: as built)
        if dtype in INT8_FORMS:  # folded, quantised; NaN inputs give NaN outputs
            specs = list(calibration or ())
            self.form = convert_backbone_for_cpu(
                self.model, dtype, lambda: [self._predict(spec) for spec in specs], keep_float)

    # ---------------------------------------------------------------- set-up
    def _build(self, cfg, device):
        if self.task == 'classification':
            from mmpretrain import ImageClassificationInferencer
            return ImageClassificationInferencer(cfg, pretrained=False, device=device)
        if self.task == 'detection':
            from mmdet.apis import DetInferencer
            return DetInferencer(cfg, weights=None, device=device, show_progress=False)
        from mmseg.apis import MMSegInferencer
        inf = MMSegInferencer(cfg, weights=None, device=device)
        inf.show_progress = False
        return inf

    @property
    def num_classes(self) -> int:
        m = self.model
        if self.task == 'classification':
            return int(m.head.num_classes)
        if self.task == 'detection':
            return int(m.roi_head.bbox_head.num_classes)
        return int(m.decode_head.num_classes)

    def _class_names(self, meta: dict) -> Tuple[List[str], list, str]:
        """Names: the checkpoint's meta, the config's dataset, the package's label lists by
        class count (ImageNet-1k, COCO, ADE20K), else ``class i``."""
        n = self.num_classes
        ds = self.cfg.test_dataloader.dataset
        ds_meta = dict(meta.get('dataset_meta') or {})
        candidates = [
            ('checkpoint', ds_meta.get('classes') or meta.get('CLASSES'),
             ds_meta.get('palette') or meta.get('PALETTE')),
            ('config', (ds.get('metainfo') or {}).get('classes'),
             (ds.get('metainfo') or {}).get('palette'))]
        if n == 1000:
            candidates.append(('imagenet1k', label_names('imagenet1k'), None))
        candidates.append(('dataset', *_dataset_names(ds, n)))
        for source, names, palette in candidates:
            if names is not None and len(names) == n:
                return [str(c) for c in names], _palette(palette, n), source
        return [f'class {i}' for i in range(n)], _palette(None, n), 'indices'

    # ---------------------------------------------------------------- running
    def __call__(self, spec: str, out_dir: Optional[str] = None,
                 name: Optional[str] = None) -> dict:
        """Predict one image (a path or ``fashion-mnist:IDX``); returns the JSON dict."""
        rgb, sample, seconds = self._predict(spec)
        record = dict(image=spec, task=self.task, height=int(rgb.shape[0]),
                      width=int(rgb.shape[1]), config=self.config_name,
                      checkpoint=self.checkpoint, classes_from=self.classes_from,
                      seconds=round(seconds, 4))
        extra, vis = getattr(self, f'_{self.task}')(sample, rgb)
        record.update(extra)
        if out_dir is not None:
            name = name or output_name(spec)
            os.makedirs(out_dir, exist_ok=True)
            _save_png(vis, os.path.join(out_dir, name + '.png'))
            record['png'] = name + '.png'
            if self.task == 'segmentation':
                labels = sample.pred_sem_seg.data[0].cpu().numpy().astype(np.uint8)
                _save_png(labels, os.path.join(out_dir, name + '_labels.png'))
                record['labels_png'] = name + '_labels.png'
            with open(os.path.join(out_dir, name + '.json'), 'w') as f:
                json.dump(record, f, indent=1)
        return record

    def _predict(self, spec: str):
        """``(rgb image, data sample, seconds)`` of one image spec."""
        rgb = load_image(spec)
        bgr = np.ascontiguousarray(rgb[..., ::-1])  # the pipelines' LoadImageFromFile order
        start = time.perf_counter()
        from mmengine.registry import DefaultScope
        with DefaultScope.overwrite_default_scope(self.scope), torch.no_grad(), \
                torch.autocast(torch.device(self.device).type,
                               dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            sample = self._forward(bgr)
        return rgb, sample, time.perf_counter() - start

    def _forward(self, bgr: np.ndarray):
        if self.task == 'classification':  # (its __call__ draws a progress bar per image)
            batch = next(iter(self.inferencer.preprocess([bgr])))
            return self.inferencer.forward(batch)[0]
        if self.task == 'detection':
            out = self.inferencer([bgr], return_datasamples=True, no_save_vis=True,
                                  no_save_pred=True)
            return out['predictions'][0]
        out = self.inferencer([bgr], return_datasamples=True)
        return out[0] if isinstance(out, list) else out

    def _classification(self, sample, rgb) -> Tuple[dict, np.ndarray]:
        scores = sample.pred_score.float().cpu()
        values, labels = scores.topk(min(self.topk, scores.numel()))
        top = [dict(label=int(i), name=self.classes[int(i)], score=round(float(s), 6))
               for s, i in zip(values, labels)]
        extra = dict(topk=top, pred_label=top[0]['label'], pred_name=top[0]['name'],
                     pred_score=top[0]['score'])
        return extra, draw_labels(rgb, [f"{t['name']}  {t['score']:.3f}" for t in top])

    def _detection(self, sample, rgb) -> Tuple[dict, np.ndarray]:
        inst = sample.pred_instances.cpu()
        order = inst.scores.argsort(descending=True)
        masks = inst.get('masks')
        rows = []
        for i in order.tolist():
            row = dict(label=int(inst.labels[i]), name=self.classes[int(inst.labels[i])],
                       score=round(float(inst.scores[i]), 6),
                       bbox=[round(float(v), 2) for v in inst.bboxes[i]])
            if masks is not None:
                m = masks[i].numpy().astype(bool)
                row.update(mask_area=int(m.sum()), mask_rle=_rle(m))
            rows.append(row)
        vis = self.inferencer.visualizer
        vis.dataset_meta = self.model.dataset_meta
        vis.add_datasample('image', rgb, sample, draw_gt=False, show=False,
                           pred_score_thr=self.score_thr)
        extra = dict(score_thr=self.score_thr, num_instances=len(rows),
                     num_drawn=sum(r['score'] >= self.score_thr for r in rows), instances=rows)
        return extra, vis.get_image()

    def _segmentation(self, sample, rgb) -> Tuple[dict, np.ndarray]:
        labels = sample.pred_sem_seg.data[0].cpu().numpy()
        ids, counts = np.unique(labels, return_counts=True)
        present = [dict(label=int(i), name=self.classes[int(i)] if i < len(self.classes)
                        else 'ignored', pixels=int(c), fraction=round(float(c) / labels.size, 6))
                   for i, c in sorted(zip(ids, counts), key=lambda t: -t[1])]
        vis = self.inferencer.visualizer
        vis.set_dataset_meta(classes=self.classes, palette=self.palette)
        vis.alpha = 0.5
        vis.add_datasample('image', rgb, sample, draw_gt=False, show=False, with_labels=True)
        return dict(classes_present=present), vis.get_image()


# -------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _quiet_mmengine():
    from mmengine.logging import MMLogger
    loggers = {MMLogger.get_current_instance(), MMLogger.get_instance('mmengine')}
    levels = [(lg, lg.level) for lg in loggers]
    try:
        for lg, _ in levels:
            lg.setLevel(logging.WARNING)
        yield
    finally:
        for lg, level in levels:
            lg.setLevel(level)


def load_weights(model: torch.nn.Module, src: str) -> Tuple[object, dict]:
    """Load ``src`` (path or URL, any layout) strictly; returns ``(report, meta)``."""
    path = resolve_file(src)
    obj = torch_load(path)
    meta = obj.get('meta') if isinstance(obj, dict) and isinstance(obj.get('meta'), dict) \
        else {}
    state = unwrap_state_dict(obj, path)
    check_finite(state, path)
    report = load_checkpoint(model, state, strict=True, log=False)
    report.source = src
    return report, meta


def _dataset_names(ds_cfg, n: int) -> Tuple[Optional[Sequence[str]], Optional[list]]:
    """Class names (and palette) of the config's dataset class, without reading its data."""
    kind = ds_cfg.get('type')
    if kind == 'ShapesADEDataset':
        meta_file = os.path.join(str(ds_cfg.get('data_root', '')), 'meta.json')
        if os.path.isfile(meta_file):
            with open(meta_file) as f:
                meta = json.load(f)
            return meta['classes'], meta.get('palette')
        if 1 <= n <= shapes_ade.MAX_CLASSES:
            return shapes_ade.class_names(n), shapes_ade.palette(n)
        return None, None
    from mmengine.registry import DATASETS
    cls = DATASETS.get(kind) if isinstance(kind, str) else kind
    info = dict(getattr(cls, 'METAINFO', None) or {})
    return info.get('classes'), info.get('palette')


def _palette(palette, n: int) -> list:
    if palette is not None and len(palette) >= n:
        return [tuple(int(v) for v in p) for p in palette[:n]]
    rng = np.random.RandomState(42)  # mmseg's / mmdet's fallback: fixed random colours
    return [tuple(int(v) for v in rng.randint(0, 256, 3)) for _ in range(n)]


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return dict(size=[int(v) for v in rle['size']], counts=rle['counts'].decode('ascii'))


def draw_labels(rgb: np.ndarray, lines: Sequence[str], min_side: int = 224) -> np.ndarray:
    """The image with ``lines`` in a dark box at the top left; images whose shorter side is
    under ``min_side`` are enlarged (nearest) by an integer factor first, so text fits."""
    import cv2
    scale = max(1, -(-min_side // max(1, min(rgb.shape[:2]))))
    img = np.ascontiguousarray(np.repeat(np.repeat(rgb, scale, 0), scale, 1) if scale > 1
                               else rgb.copy())
    font, size = cv2.FONT_HERSHEY_SIMPLEX, max(0.4, min(img.shape[:2]) / 600)
    thick = max(1, int(round(size * 2)))
    boxes = [cv2.getTextSize(t, font, size, thick)[0] for t in lines]
    lh = max((b[1] for b in boxes), default=10) + 8 * thick
    w = min(img.shape[1], max((b[0] for b in boxes), default=0) + 12)
    h = min(img.shape[0], lh * len(lines) + 6)
    img[:h, :w] = (img[:h, :w] * 0.35).astype(img.dtype)
    for k, text in enumerate(lines):
        colour = (255, 255, 80) if k == 0 else (255, 255, 255)
        cv2.putText(img, text, (6, 3 + lh * (k + 1) - 4 * thick), font, size, colour, thick,
                    cv2.LINE_AA)
    return img


def _save_png(arr: np.ndarray, path: str) -> None:
    from PIL import Image
    Image.fromarray(np.ascontiguousarray(arr)).save(path)


CALIBRATION_DEFAULT = 16  #: images to predict that calibrate 'int8-static' if none are named


def calibration_specs(specs: Sequence[str], calibration=None) -> List[str]:
    """``'int8-static'``'s calibration specs: ``calibration`` (files, folders, ...), or the
    first :data:`CALIBRATION_DEFAULT` of ``specs``."""
    if calibration is None:
        return list(specs[:CALIBRATION_DEFAULT])
    return list_images([calibration] if isinstance(calibration, str) else list(calibration))


def infer(config, checkpoint: Optional[str] = 'none', images: Union[str, Sequence[str]] = (),
          out_dir: Optional[str] = None, device: str = 'cpu', dtype: Optional[str] = None,
          score_thr: float = 0.3, topk: int = 5, cfg_options: Optional[dict] = None,
          calibration: Union[str, Sequence[str], None] = None,
          keep_float: Sequence[str] = ()) -> List[Dict]:
    """Predict every image of ``images`` (files, folders, ``fashion-mnist:IDX``) with the
    config's model and ``checkpoint``; returns one JSON-ready dict per image and, with
    ``out_dir``, writes ``<name>.json`` and ``<name>.png`` for each.  ``dtype='int8-static'``
    calibrates on ``calibration`` (:func:`calibration_specs`)."""
    specs = list_images([images] if isinstance(images, str) else list(images))
    if dtype == 'int8-static':
        calibration = calibration_specs(specs, calibration)
    predictor = Predictor(config, checkpoint, device, dtype, score_thr, topk, cfg_options,
                          calibration=calibration, keep_float=keep_float)
    names = unique_names(specs)
    return [predictor(spec, out_dir, name) for spec, name in zip(specs, names)]


def unique_names(specs: Sequence[str]) -> List[str]:
    """Output stems, made unique (``a``, ``a_2``, ...) when two inputs share one."""
    seen: Dict[str, int] = {}
    out = []
    for spec in specs:
        base = output_name(spec)
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f'{base}_{seen[base]}')
    return out
