"""A small, seeded COCO-format instance-segmentation dataset of coloured shapes.

Every image holds a few non-overlapping shapes (rectangle, ellipse, triangle) painted in a
random colour over a noisy background.  Each shape is a COCO polygon, and the image is
painted from *the same* rasterisation of that polygon that pycocotools (and therefore mmdet's
``LoadAnnotations`` and ``CocoMetric``) produces, so the masks are exact: every pixel of an
instance mask carries that instance's colour and no other pixel does.

Layout written by :func:`make_shapes_coco` (the COCO layout mmdet's ``CocoDataset`` reads)::

    ROOT/
      annotations/instances_train.json
      annotations/instances_val.json
      train/000000.png ...
      val/000000.png ...
      preview.png            (first training images with their masks outlined)

Only numpy, Pillow and pycocotools are needed; the same seed gives the same bytes.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

#: category names; ids are 1-based in the json (COCO convention)
CLASSES: Tuple[str, ...] = ('rectangle', 'ellipse', 'triangle')
#: colours mmdet's visualiser uses for the three classes
PALETTE: Tuple[Tuple[int, int, int], ...] = ((220, 20, 60), (0, 130, 230), (60, 180, 75))


def _rasterise(polygon: List[float], height: int, width: int) -> np.ndarray:
    """Polygon -> binary mask with pycocotools (the rasteriser used by mmdet and COCO eval)."""
    from pycocotools import mask as mask_utils
    rles = mask_utils.frPyObjects([polygon], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def _shape_polygon(rng: np.random.Generator, kind: int, cx: float, cy: float,
                   size: float) -> List[float]:
    """Vertices (x0, y0, x1, y1, ...) of one shape centred at (cx, cy), about ``size`` wide."""
    angle = rng.uniform(0, math.pi)
    if kind == 0:  # rectangle, random aspect and rotation
        w, h = size * rng.uniform(0.6, 1.0) / 2, size * rng.uniform(0.35, 0.8) / 2
        pts = [(-w, -h), (w, -h), (w, h), (-w, h)]
    elif kind == 1:  # ellipse, 32 vertices
        a, b = size * rng.uniform(0.7, 1.0) / 2, size * rng.uniform(0.45, 1.0) / 2
        pts = [(a * math.cos(t), b * math.sin(t))
               for t in np.linspace(0, 2 * math.pi, 32, endpoint=False)]
    else:  # triangle: three points around the centre
        r = size / 2
        base = rng.uniform(0, 2 * math.pi)
        pts = [(r * math.cos(base + t), r * math.sin(base + t))
               for t in (0.0, 2 * math.pi / 3 + rng.uniform(-0.4, 0.4),
                         4 * math.pi / 3 + rng.uniform(-0.4, 0.4))]
    c, s = math.cos(angle), math.sin(angle)
    out: List[float] = []
    for x, y in pts:
        out += [round(cx + c * x - s * y, 2), round(cy + s * x + c * y, 2)]
    return out


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2r+1)^2 square."""
    h, w = mask.shape
    padded = np.pad(mask, radius)
    out = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy:dy + h, dx:dx + w]
    return out


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    for _ in range(100):
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - background).sum() > 180:
            return colour
    return 255 - background


def render_image(rng: np.random.Generator, height: int, width: int,
                 num_shapes: int, min_size: float, max_size: float
                 ) -> Tuple[np.ndarray, List[dict]]:
    """One RGB uint8 image and its instances (``category_id``, ``polygon``, ``mask``)."""
    background = rng.integers(40, 216, 3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    gradient = (rng.uniform(-25, 25) * yy / height + rng.uniform(-25, 25) * xx / width)
    img = background[None, None, :] + gradient[..., None] + rng.normal(0, 8, (height, width, 3))
    occupied = np.zeros((height, width), bool)
    instances: List[dict] = []
    attempts = 0
    while len(instances) < num_shapes and attempts < 50 * max(num_shapes, 1):
        attempts += 1
        kind = int(rng.integers(0, len(CLASSES)))
        size = rng.uniform(min_size, max_size)
        margin = size / 2 + 1
        if width - margin <= margin or height - margin <= margin:
            continue
        cx, cy = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
        polygon = _shape_polygon(rng, kind, cx, cy, size)
        mask = _rasterise(polygon, height, width)
        if mask.sum() < 16:
            continue
        # keep shapes apart (2 px) so the masks are exactly the visible pixels
        grown = _dilate(mask, 2)
        if (grown & occupied).any():
            continue
        occupied |= grown
        colour = _contrasting_colour(rng, background)
        shade = colour[None, :] + rng.normal(0, 6, (int(mask.sum()), 3))
        img[mask] = shade
        instances.append(dict(category_id=kind + 1, polygon=polygon, mask=mask))
    return np.clip(img, 0, 255).astype(np.uint8), instances


def _annotation(ann_id: int, image_id: int, inst: dict) -> dict:
    mask = inst['mask']
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    bbox = [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]
    return dict(id=ann_id, image_id=image_id, category_id=inst['category_id'],
                segmentation=[inst['polygon']], area=int(mask.sum()), bbox=bbox, iscrowd=0)


def make_split(root: Union[str, Path], split: str, num_images: int, seed: int,
               image_size: Union[int, Sequence[int]] = (128, 128),
               shapes_per_image: Tuple[int, int] = (1, 3),
               size_range: Tuple[float, float] = (0.15, 0.45),
               empty_images: int = 0) -> Path:
    """Write ``num_images`` images of one split and ``annotations/instances_{split}.json``.

    Args:
        image_size: ``(height, width)`` or one int.
        shapes_per_image: inclusive range of the number of shapes per image.
        size_range: shape size as a fraction of the shorter image side.
        empty_images: the last ``empty_images`` images hold no shape (background only).
    Returns the path of the annotation file.
    """
    from PIL import Image
    root = Path(root)
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if num_images < 1 or height < 32 or width < 32:
        raise ValueError(f'need num_images >= 1 and images of at least 32x32 px, got '
                         f'{num_images} images of {height}x{width}')
    lo, hi = shapes_per_image
    if not 0 <= lo <= hi:
        raise ValueError(f'shapes_per_image must be (min, max) with 0 <= min <= max, '
                         f'got {shapes_per_image}')
    rng = np.random.default_rng(seed)
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    side = min(height, width)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        n = 0 if image_id > num_images - empty_images else int(rng.integers(lo, hi + 1))
        img, instances = render_image(rng, height, width, n, size_range[0] * side,
                                      size_range[1] * side)
        file_name = f'{image_id - 1:06d}.png'
        Image.fromarray(img).save(root / split / file_name)
        images.append(dict(id=image_id, file_name=file_name, height=height, width=width))
        for inst in instances:
            annotations.append(_annotation(len(annotations) + 1, image_id, inst))
    categories = [dict(id=i + 1, name=name, supercategory='shape')
                  for i, name in enumerate(CLASSES)]
    coco = dict(info=dict(description=f'EnFormer shapes ({split}), seed {seed}',
                          version='1.0'),
                licenses=[], images=images, annotations=annotations, categories=categories)
    ann_file = root / 'annotations' / f'instances_{split}.json'
    ann_file.write_text(json.dumps(coco))
    return ann_file


def draw_preview(root: Union[str, Path], split: str = 'train', num: int = 8,
                 out: Optional[Union[str, Path]] = None) -> Path:
    """A PNG grid of the first ``num`` images of a split with each mask's outline drawn in
    its class colour (a quick look that masks and pixels agree)."""
    from PIL import Image
    from pycocotools.coco import COCO
    import contextlib
    import io
    root = Path(root)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(root / 'annotations' / f'instances_{split}.json'))
    tiles = []
    for image_id in sorted(coco.getImgIds())[:num]:
        info = coco.loadImgs(image_id)[0]
        img = np.array(Image.open(root / split / info['file_name']).convert('RGB'))
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            mask = coco.annToMask(ann).astype(bool)
            edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) &
                            np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
            img[edge] = PALETTE[ann['category_id'] - 1]
        tiles.append(img)
    h, w = tiles[0].shape[:2]
    cols = min(4, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    grid = np.full((rows * (h + 4), cols * (w + 4), 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[r * (h + 4):r * (h + 4) + tile.shape[0], c * (w + 4):c * (w + 4) + tile.shape[1]] = tile
    out = Path(out) if out else root / 'preview.png'
    Image.fromarray(grid).save(out)
    return out


def make_shapes_coco(root: Union[str, Path], num_train: int = 200, num_val: int = 50,
                     image_size: Union[int, Sequence[int]] = (128, 128), seed: int = 0,
                     shapes_per_image: Tuple[int, int] = (1, 3), empty_train_images: int = 0,
                     preview: bool = True, verbose: bool = False) -> Dict[str, Path]:
    """Generate the train and val splits under ``root`` (see the module docstring).

    The two splits use different seeds derived from ``seed`` so they never share images.
    Returns ``{'train': ann_file, 'val': ann_file}``.
    """
    root = Path(root)
    out = {}
    for split, num, split_seed, empty in (('train', num_train, seed * 2 + 1, empty_train_images),
                                          ('val', num_val, seed * 2 + 2, 0)):
        if verbose:
            print(f'[shapes_coco] writing {num} {split} images to {root / split}', flush=True)
        out[split] = make_split(root, split, num, split_seed, image_size, shapes_per_image,
                                empty_images=empty)
    if preview:
        p = draw_preview(root, 'train')
        if verbose:
            print(f'[shapes_coco] preview: {p}', flush=True)
    return out


__all__ = ['CLASSES', 'PALETTE', 'make_shapes_coco', 'make_split', 'render_image',
           'draw_preview']
