"""Reading and preparing single images for the tools (inference, cluster pictures).

:func:`read_image` decodes a file exactly as the training/test pipelines do (mmcv's
``LoadImageFromFile``: OpenCV, EXIF orientation applied), so a photo taken on its side is the
same picture in a pipeline, in ``tools/infer.py`` and in the cluster visualiser.  Without mmcv
(backbone-only install) Pillow decodes it and applies the EXIF orientation the same way.
"""
from __future__ import annotations

import os
import re
from typing import Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .idx import read_idx_item

#: where the Debian package ``dataset-fashion-mnist`` puts its files
FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def read_image(path: str) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB, EXIF orientation applied."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'image {path!r} does not exist')
    with open(path, 'rb') as f:
        data = f.read()
    try:
        import mmcv
    except ImportError:
        mmcv = None
    if mmcv is not None:
        try:
            img = mmcv.imfrombytes(data, flag='color', channel_order='rgb', backend='cv2')
        except Exception:  # OpenCV >= 4.x: cvtColor on the failed decode raises cv2.error
            img = None
        if img is None:
            raise ValueError(f'{path} is not an image OpenCV can decode')
        return np.ascontiguousarray(img)
    import io

    from PIL import Image, ImageOps
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert('RGB'))
    except OSError as exc:
        raise ValueError(f'{path} is not an image Pillow can decode ({exc})') from None


def load_image(spec: str) -> np.ndarray:
    """An image file, or ``fashion-mnist:IDX`` (test split of the Debian dataset package;
    ``fashion-mnist-train:IDX`` for the training split), as ``(H, W, 3)`` uint8 RGB."""
    m = re.fullmatch(r'fashion-mnist(-train)?:(\d+)', spec)
    if m is None:
        return read_image(spec)
    split = 'train' if m.group(1) else 't10k'
    path = os.path.join(os.environ.get('FASHION_MNIST_DIR', FASHION_MNIST_DIR),
                        f'{split}-images-idx3-ubyte.gz')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} not found (apt-get install dataset-fashion-mnist or '
                                'set FASHION_MNIST_DIR)')
    return np.repeat(read_idx_item(path, int(m.group(2)))[..., None], 3, axis=-1)


def list_images(specs: Sequence[str]) -> list:
    """Files, folders (their images, sorted) and ``fashion-mnist:IDX`` specs, expanded."""
    out = []
    for spec in specs:
        if os.path.isdir(spec):
            found = sorted(os.path.join(spec, n) for n in os.listdir(spec)
                           if n.lower().endswith(IMAGE_SUFFIXES))
            if not found:
                raise FileNotFoundError(f'folder {spec!r} holds no image '
                                        f'({", ".join(IMAGE_SUFFIXES)})')
            out += found
        else:
            out.append(spec)
    return out


def prepare_image(rgb: np.ndarray, size: Tuple[int, int], mean: Sequence[float],
                  std: Sequence[float], in_channels: int = 3
                  ) -> Tuple[torch.Tensor, np.ndarray]:
    """Resize (bilinear, antialiased) to ``size`` and normalise with ``mean``/``std`` given on
    the 0-255 scale; returns the ``(1, C, H, W)`` tensor and the resized image as floats in
    [0, 1] for drawing."""
    t = torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=tuple(size), mode='bilinear', align_corners=False,
                      antialias=True).clamp(0, 255)
    shown = (t[0].permute(1, 2, 0) / 255.0).numpy()
    if in_channels == 1:
        t = t.mean(1, keepdim=True)
    elif in_channels != 3:
        raise ValueError(f'cannot feed an RGB image to a model with {in_channels} channels')
    mean_t = torch.tensor((list(mean) * 3)[:in_channels], dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor((list(std) * 3)[:in_channels], dtype=torch.float32).view(1, -1, 1, 1)
    return (t - mean_t) / std_t, shown


def dense_size(h: int, w: int, max_side: int = 640, multiple: int = 32) -> Tuple[int, int]:
    """Keep the aspect ratio, cap the longer side, round both sides to ``multiple``."""
    scale = min(1.0, max_side / max(h, w))
    return (max(multiple, int(round(h * scale / multiple)) * multiple),
            max(multiple, int(round(w * scale / multiple)) * multiple))
