"""A small, seeded semantic-segmentation dataset in the ADE20K folder layout.

Every image shows a few textured shapes over a smooth, noisy background.  A *class* is a
texture style (a colour family plus a pattern: solid, stripes, checker, dots, ...); the
shape (ellipse, rectangle, triangle) and its size, position, rotation and exact colour are
random, so a model has to look at the texture and not at the outline.  Shapes may overlap;
the label map follows the painting order, so it is exact: the image and the label map are
painted from the same boolean masks.

Layout written by :func:`make_shapes_ade` (what mmseg's ``ADE20KDataset`` reads)::

    ROOT/
      images/training/000000.jpg ...       RGB JPEG (quality 95)
      images/validation/000000.jpg ...
      annotations/training/000000.png ...  uint8 label map, one channel
      annotations/validation/000000.png ...
      meta.json                            classes, palette, seed, counts, sizes
      preview.png                          first training images beside their label maps

Label convention (ADE20K's, used with ``reduce_zero_label=True``): ``0`` is background /
"other" (ignored in training and evaluation), ``1..K`` are the classes, which mmseg maps to
``0..K-1`` (and ``0`` to ``255``, the ignore index).

Only numpy and Pillow are needed; the same arguments give the same files, and image ``i``
of a split does not depend on how many images are generated.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

#: (name, RGB base colour, pattern) of every texture class, in label order (label = index + 1)
STYLES: Tuple[Tuple[str, Tuple[int, int, int], str], ...] = (
    ('red-solid', (200, 40, 40), 'solid'),
    ('green-hstripes', (40, 170, 60), 'hstripes'),
    ('blue-vstripes', (40, 80, 210), 'vstripes'),
    ('yellow-checker', (220, 200, 40), 'checker'),
    ('magenta-dots', (190, 50, 180), 'dots'),
    ('cyan-diagonal', (40, 190, 200), 'diagonal'),
    ('orange-rings', (235, 130, 30), 'rings'),
    ('white-grid', (235, 235, 235), 'grid'),
)
MAX_CLASSES = len(STYLES)
PATTERNS = ('solid', 'hstripes', 'vstripes', 'checker', 'dots', 'diagonal', 'rings', 'grid')
SPLITS = ('training', 'validation')


def class_names(num_classes: int = MAX_CLASSES) -> Tuple[str, ...]:
    _check_num_classes(num_classes)
    return tuple(s[0] for s in STYLES[:num_classes])


def palette(num_classes: int = MAX_CLASSES) -> List[List[int]]:
    _check_num_classes(num_classes)
    return [list(s[1]) for s in STYLES[:num_classes]]


def _check_num_classes(num_classes: int) -> None:
    if not isinstance(num_classes, int) or not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f'num_classes must be an int in [1, {MAX_CLASSES}] (one per texture '
                         f'style), got {num_classes!r}')


# ------------------------------------------------------------------------------ painting
def _pattern(kind: str, yy: np.ndarray, xx: np.ndarray, period: float,
             phase: float) -> np.ndarray:
    """Intensity in [0, 1] of a texture pattern on pixel coordinates (yy, xx)."""
    if kind == 'solid':
        return np.ones_like(yy, dtype=np.float32)
    if kind == 'hstripes':
        return (((yy + phase) // (period / 2)) % 2).astype(np.float32)
    if kind == 'vstripes':
        return (((xx + phase) // (period / 2)) % 2).astype(np.float32)
    if kind == 'checker':
        return ((((yy + phase) // period) + ((xx + phase) // period)) % 2).astype(np.float32)
    if kind == 'dots':
        dy = (yy + phase) % period - period / 2
        dx = (xx + phase) % period - period / 2
        return (dy * dy + dx * dx <= (period * 0.3) ** 2).astype(np.float32)
    if kind == 'diagonal':
        return (((xx + yy + phase) // (period / 1.5)) % 2).astype(np.float32)
    if kind == 'rings':
        r = np.sqrt((yy - phase) ** 2 + (xx - phase * 0.5) ** 2)
        return ((r // (period / 2)) % 2).astype(np.float32)
    if kind == 'grid':
        return (((yy + phase) % period < 2) | ((xx + phase) % period < 2)).astype(np.float32)
    raise ValueError(f'unknown pattern {kind!r}; choose one of {PATTERNS}')


def _shape_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Boolean mask of one random ellipse / rotated rectangle / triangle."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    short = min(height, width)
    size = rng.uniform(0.25, 0.55) * short
    cy, cx = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
    theta = rng.uniform(0, math.pi)
    c, s = math.cos(theta), math.sin(theta)
    u = c * (xx - cx) + s * (yy - cy)
    v = -s * (xx - cx) + c * (yy - cy)
    kind = int(rng.integers(0, 3))
    if kind == 0:  # ellipse
        a, b = size * rng.uniform(0.5, 0.8), size * rng.uniform(0.3, 0.8)
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if kind == 1:  # rectangle
        a, b = size * rng.uniform(0.4, 0.8), size * rng.uniform(0.25, 0.7)
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    # triangle: inside three half-planes
    r = size * 0.8
    angles = rng.uniform(0, 2 * math.pi) + np.array([0.0, 2.1, 4.2]) + rng.uniform(-0.3, 0.3, 3)
    px, py = cx + r * np.cos(angles), cy + r * np.sin(angles)
    signs = []
    for i in range(3):
        j = (i + 1) % 3
        signs.append((px[j] - px[i]) * (yy - py[i]) - (py[j] - py[i]) * (xx - px[i]) >= 0)
    return (signs[0] & signs[1] & signs[2]) | (~signs[0] & ~signs[1] & ~signs[2])


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth grey-ish gradient plus pixel noise, float32 (H, W, 3) in [0, 255]."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(70, 150, 3).astype(np.float32)
    gy, gx = rng.uniform(-0.4, 0.4, 2)
    grad = (gy * (yy - height / 2) + gx * (xx - width / 2))[..., None]
    noise = rng.normal(0, 12, (height, width, 3)).astype(np.float32)
    return base + grad + noise


def render_sample(rng: np.random.Generator, height: int, width: int, num_classes: int,
                  max_shapes: int = 4) -> Tuple[np.ndarray, np.ndarray]:
    """One (RGB uint8 (H, W, 3), label uint8 (H, W)) pair; labels in {0 .. num_classes}."""
    _check_num_classes(num_classes)
    img = _background(rng, height, width)
    label = np.zeros((height, width), np.uint8)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        mask = _shape_mask(rng, height, width)
        if mask.sum() < 16:
            continue
        cls = int(rng.integers(0, num_classes))
        _, colour, kind = STYLES[cls]
        colour = np.clip(np.array(colour, np.float32) + rng.uniform(-25, 25, 3), 0, 255)
        dark = colour * rng.uniform(0.25, 0.45)
        pat = _pattern(kind, yy, xx, float(rng.uniform(6, 10)), float(rng.uniform(0, 10)))
        paint = dark + (colour - dark) * pat[..., None]
        paint += rng.normal(0, 6, paint.shape).astype(np.float32)
        img[mask] = paint[mask]
        label[mask] = cls + 1
    return np.clip(img, 0, 255).round().astype(np.uint8), label


# ------------------------------------------------------------------------------ writing
def _sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), SPLITS.index(split), int(index)])


def _preview(root: Path, num_classes: int, count: int = 6) -> Path:
    from PIL import Image
    pal = np.zeros((256, 3), np.uint8)
    pal[1:num_classes + 1] = np.array(palette(num_classes), np.uint8)
    tiles = []
    for i in range(count):
        img_path = root / 'images' / 'training' / f'{i:06d}.jpg'
        if not img_path.exists():
            break
        img = np.asarray(Image.open(img_path).convert('RGB'))
        lab = np.asarray(Image.open(root / 'annotations' / 'training' / f'{i:06d}.png'))
        pair = np.zeros((160, 2 * 160 + 4, 3), np.uint8)
        h, w = min(img.shape[0], 160), min(img.shape[1], 160)
        pair[:h, :w] = img[:h, :w]
        pair[:h, 164:164 + w] = pal[lab[:h, :w]]
        tiles.append(pair)
    sheet = np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255)
                            for t in tiles], axis=0)
    out = root / 'preview.png'
    Image.fromarray(sheet).save(out)
    return out


def make_shapes_ade(root: Union[str, Path], num_train: int = 64, num_val: int = 16,
                    num_classes: int = 6, seed: int = 0,
                    size_range: Sequence[int] = (112, 176), max_shapes: int = 4,
                    preview: bool = True, verbose: bool = False) -> Dict:
    """Write the dataset under ``root`` (see module doc) and return its ``meta.json`` dict.

    Image sides are drawn independently from ``size_range`` (inclusive), so images are
    generally non-square and their sides are not multiples of 32.
    """
    from PIL import Image
    _check_num_classes(num_classes)
    for name, n in (('num_train', num_train), ('num_val', num_val)):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f'{name} must be a positive int, got {n!r}')
    lo, hi = (int(v) for v in size_range)
    if not 32 <= lo <= hi:
        raise ValueError(f'size_range must be (lo, hi) with 32 <= lo <= hi, got {size_range}')
    root = Path(root)
    counts = {'training': num_train, 'validation': num_val}
    for split, n in counts.items():
        img_dir = root / 'images' / split
        ann_dir = root / 'annotations' / split
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rng = _sample_rng(seed, split, i)
            h, w = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
            img, label = render_sample(rng, h, w, num_classes, max_shapes)
            Image.fromarray(img).save(img_dir / f'{i:06d}.jpg', quality=95)
            Image.fromarray(label).save(ann_dir / f'{i:06d}.png')
            if verbose and ((i + 1) % 50 == 0 or i + 1 == n):
                print(f'[shapes_ade] {split}: {i + 1}/{n} images', flush=True)
    meta = dict(classes=list(class_names(num_classes)), palette=palette(num_classes),
                seed=seed, num_classes=num_classes, counts=counts, size_range=[lo, hi],
                max_shapes=max_shapes, reduce_zero_label=True,
                label_convention='0 = background/ignored, 1..K = classes')
    (root / 'meta.json').write_text(json.dumps(meta, indent=1))
    if preview:
        meta['preview'] = str(_preview(root, num_classes))
    return meta


def read_meta(root: Union[str, Path]) -> Optional[Dict]:
    """The ``meta.json`` of a generated dataset, or ``None`` if there is none."""
    path = Path(root) / 'meta.json'
    return json.loads(path.read_text()) if path.exists() else None
