"""Published weights: what each model's official checkpoint is, and how it reaches the disk.

``PRETRAINED_CFGS`` is the per-model table (timm's ``pretrained_cfg`` idea): the URL of the
official release file, its format, the input it expects (size, crop, interpolation, mean/std),
the classes and the published metric.  :func:`resolve_file` turns a URL into a local file:

1. ``$ENFORMER_WEIGHTS/<file name>`` if that folder holds it (machines without internet
   access: download the file elsewhere and put it there);
2. the torch hub cache, ``$TORCH_HOME/hub/checkpoints/<file name>`` (where ``torch.hub`` and
   timm keep weights too), if an earlier run downloaded it;
3. otherwise it downloads into that cache with a progress bar (to a temporary name first, so
   an interrupted download never leaves a half file behind).

Offline, behind a firewall or on a 404, :class:`WeightsUnavailableError` names the URL and the
two places where the file can be put instead.
"""
from __future__ import annotations

import os
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

#: environment variable naming a folder of already-downloaded weight files
WEIGHTS_ENV = 'ENFORMER_WEIGHTS'
RELEASE = 'https://github.com/En-Former/EnFormer/releases/download/v1.0/'
#: timm's ImageNet statistics (0-1 pixel scale); the published evaluation uses them
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsUnavailableError(RuntimeError):
    """A weights URL could not be downloaded (the message says where to put the file)."""


@dataclass(frozen=True)
class PretrainedCfg:
    """What a published checkpoint is and what its model expects.

    ``file_format``: ``'timm'`` (``.pth.tar`` with ``state_dict``), ``'mmdet'`` or ``'mmseg'``
    (mmcv 1.x checkpoints of a whole detector / segmentor).  ``mean``/``std`` are on the 0-1
    pixel scale.  ``metric`` is the published number on the task's benchmark.
    """
    url: str
    file_format: str = 'timm'
    task: str = 'classification'
    input_size: Tuple[int, int, int] = (3, 224, 224)
    crop_pct: float = 0.9
    interpolation: str = 'bicubic'
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    num_classes: int = 1000
    label_names: str = 'imagenet1k'
    metric: Dict[str, float] = field(default_factory=dict)

    @property
    def file_name(self) -> str:
        return os.path.basename(urllib.parse.urlparse(self.url).path)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _cls(name: str, top1: float) -> PretrainedCfg:
    return PretrainedCfg(RELEASE + f'enformer_{name}.pth.tar', metric={'top1': top1})


def _det(name: str, box: float, mask: float) -> PretrainedCfg:
    return PretrainedCfg(RELEASE + f'enformer_{name}_mask-rcnn.pth', 'mmdet', 'detection',
                         (3, 800, 1333), 1.0, 'bilinear', num_classes=80, label_names='coco',
                         metric={'bbox_mAP': box, 'segm_mAP': mask})


def _seg(name: str, miou: float) -> PretrainedCfg:
    return PretrainedCfg(RELEASE + f'enformer_{name}_fpn.pth', 'mmseg', 'segmentation',
                         (3, 512, 512), 1.0, 'bilinear', num_classes=150, label_names='ade20k',
                         metric={'mIoU': miou})


#: ``model name`` (ImageNet weights, what ``create_model(name, pretrained=True)`` loads) or
#: ``model name.tag`` (the detector / segmentor a backbone was fine-tuned in)
PRETRAINED_CFGS: Dict[str, PretrainedCfg] = {
    'enformer_s': _cls('small', 78.9),
    'enformer_b': _cls('base', 81.2),
    'enformer_l': _cls('large', 82.6),
    'enformer_s.mask_rcnn_coco': _det('small', 41.3, 38.1),
    'enformer_b.mask_rcnn_coco': _det('base', 42.8, 39.3),
    'enformer_l.mask_rcnn_coco': _det('large', 44.0, 40.0),
    'enformer_s.fpn_ade20k': _seg('small', 43.3),
    'enformer_b.fpn_ade20k': _seg('base', 44.3),
    'enformer_l.fpn_ade20k': _seg('large', 46.6),
}


def get_pretrained_cfg(name: str) -> Optional[PretrainedCfg]:
    return PRETRAINED_CFGS.get(name)


def label_names(kind: str = 'imagenet1k') -> List[str]:
    """Class names shipped with the package (``imagenet1k``: the 1000 ImageNet synsets)."""
    path = os.path.join(os.path.dirname(__file__), 'labels', f'{kind}.txt')
    if not os.path.isfile(path):
        raise ValueError(f'no label list {kind!r} in the package')
    with open(path, encoding='utf-8') as f:
        return [line.rstrip('\n') for line in f if line.strip()]


# ------------------------------------------------------------------------------ files
def is_url(src: str) -> bool:
    return src.startswith(('http://', 'https://'))


def cache_dir() -> str:
    return os.path.join(torch.hub.get_dir(), 'checkpoints')


def resolve_file(src: str, progress: bool = True, timeout: float = 30.0) -> str:
    """A local file for ``src``: ``src`` itself, or the cached / downloaded file of a URL."""
    if not is_url(src):
        return src
    name = os.path.basename(urllib.parse.urlparse(src).path)
    folder = os.environ.get(WEIGHTS_ENV)
    for candidate in ([os.path.join(folder, name)] if folder else []) + \
            [os.path.join(cache_dir(), name)]:
        if os.path.isfile(candidate):
            return candidate
    dst = os.path.join(cache_dir(), name)
    try:
        _download(src, dst, progress, timeout)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        where = os.path.join(folder, name) if folder else \
            f'<a folder>/{name} with {WEIGHTS_ENV}=<that folder>'
        raise WeightsUnavailableError(
            f'could not download {src} ({exc}). Without internet access, fetch the file on '
            f'another machine and put it at {where}, or at {dst}.') from None
    return dst


def _download(url: str, dst: str, progress: bool, timeout: float) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.download-', dir=os.path.dirname(dst))
    try:
        with os.fdopen(fd, 'wb') as out, \
                urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            total = int(response.headers.get('Content-Length') or 0)
            bar = _ProgressBar(total, os.path.basename(dst), progress)
            while True:
                chunk = response.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
                bar.update(len(chunk))
            bar.close()
        if total and os.path.getsize(tmp) != total:
            raise OSError(f'download ended after {os.path.getsize(tmp)} of {total} bytes')
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _ProgressBar:
    """tqdm when installed, else a line every 10 % on stderr."""

    def __init__(self, total: int, name: str, enabled: bool):
        self.total, self.done, self.shown, self.enabled = total, 0, -1, enabled
        self.tqdm = None
        if enabled:
            print(f'downloading {name} into {os.path.dirname(cache_dir())}', file=sys.stderr)
            try:
                from tqdm import tqdm
                self.tqdm = tqdm(total=total or None, unit='B', unit_scale=True, desc=name)
            except ImportError:
                pass

    def update(self, n: int) -> None:
        self.done += n
        if self.tqdm is not None:
            self.tqdm.update(n)
        elif self.enabled and self.total:
            tenth = 10 * self.done // self.total
            if tenth != self.shown:
                self.shown = tenth
                print(f'  {10 * tenth} % of {self.total / 2 ** 20:.1f} MiB', file=sys.stderr)

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()
