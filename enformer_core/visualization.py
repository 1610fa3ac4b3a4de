"""Pictures: cluster assignments drawn over the image (``tools/visualization/vis_clusters.py``).

Centre ``m`` of a base clustering is initialised from cell ``(m // w, m % w)`` of its grid;
:func:`centre_palette` gives it a colour that encodes that cell, so the same colour means the
same initial grid cell in every panel.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Sequence, Tuple

import numpy as np

from .analysis.assignments import AssignmentRecord


def centre_palette(grids: Sequence[Tuple[int, int]]) -> np.ndarray:
    """One RGB colour per centre, (M, 3) in [0, 1].  Centre ``m`` of a base clustering is
    initialised from cell ``(m // w, m % w)`` of its grid, so the colour encodes that cell:
    hue from the column, lightness from the row; the K base clusterings of a consensus
    get disjoint hue ranges."""
    import colorsys
    cols = []
    k = len(grids)
    for gi, (gh, gw) in enumerate(grids):
        for r in range(gh):
            for c in range(gw):
                hue = (gi + (c + 0.5) / gw * 0.9) / k if k > 1 else (c + 0.5) / gw * 0.9
                light = 0.3 + 0.45 * (r + 0.5) / gh
                cols.append(colorsys.hls_to_rgb(hue % 1.0, light, 0.85))
    return np.asarray(cols, dtype=np.float32)


def overlay(image: np.ndarray, labels: np.ndarray, conf: np.ndarray,
            palette: np.ndarray, soft: bool) -> np.ndarray:
    """Blend the centre colours over a grey copy of ``image`` (H, W, 3 floats in [0, 1]);
    opacity follows the confidence for soft assignments."""
    grey = image.mean(-1, keepdims=True).repeat(3, -1)
    colour = palette[labels % len(palette)]
    if soft:
        m = len(palette)
        c = np.clip((conf - 1.0 / m) / max(1 - 1.0 / m, 1e-6), 0, 1) if m > 1 else conf
        alpha = (0.35 + 0.6 * np.sqrt(c))[..., None]
    else:
        alpha = np.full(labels.shape + (1,), 0.8, dtype=np.float32)
    return np.clip((1 - alpha) * grey * 0.9 + alpha * colour, 0, 1)


def _legend_image(grids: Sequence[Tuple[int, int]], palette: np.ndarray) -> np.ndarray:
    """The centre grids side by side, each cell in its centre's colour (the legend)."""
    hmax = max(g[0] for g in grids)
    parts, off = [], 0
    for gh, gw in grids:
        cell = np.ones((hmax, gw, 3), dtype=np.float32)
        cell[:gh] = palette[off:off + gh * gw].reshape(gh, gw, 3)
        off += gh * gw
        parts += [cell, np.ones((hmax, 1, 3), dtype=np.float32)]
    return np.concatenate(parts[:-1], axis=1)


def render_assignment_grid(images: Sequence[np.ndarray],
                           records: Sequence[Sequence[AssignmentRecord]], out: str,
                           title: str = '', dpi: int = 110) -> Dict[str, Any]:
    """Draw one row per (image, stage, block): the image, then each base clustering and
    the consensus overlaid on it, with the centre-grid legend in each panel's corner.

    ``images``: (H, W, 3) floats in [0, 1]; ``records[i]``: the records of image i.
    Returns the label maps per panel (``{(img, name): labels}``) for inspection.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows = []
    for i, recs in enumerate(records):
        keys = []
        for r in recs:
            if (r.stage, r.block) not in keys:
                keys.append((r.stage, r.block))
        for key in keys:
            rows.append((i, key, [r for r in recs if (r.stage, r.block) == key]))
    if not rows:
        raise ValueError('nothing to draw: no assignment was recorded for the chosen '
                         'stages/blocks')
    ncols = 1 + max(len(r[2]) for r in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.6 * ncols, 2.7 * len(rows) + 0.6),
                             squeeze=False)
    maps = {}
    for ri, (i, (s, b), recs) in enumerate(rows):
        img = images[i]
        size = img.shape[:2]
        axes[ri, 0].imshow(img)
        axes[ri, 0].set_title(f'image {i}', fontsize=8)
        axes[ri, 0].set_ylabel(f'stage {s}, block {b}', fontsize=8)
        for ci, rec in enumerate(recs, start=1):
            labels, conf = rec.labels_and_confidence(size)
            maps[(i, rec.name)] = labels
            palette = centre_palette(rec.centre_grids) \
                if sum(g[0] * g[1] for g in rec.centre_grids) == rec.num_centres \
                else centre_palette([(1, rec.num_centres)])
            ax = axes[ri, ci]
            ax.imshow(overlay(img, labels, conf, palette, soft=rec.kind != 'partitional'))
            used = len(np.unique(labels))
            ah, aw = rec.points_grid
            ax.set_title(f'{rec.title}\n{used} centres used, points {ah}x{aw}', fontsize=7)
            inset = ax.inset_axes([0.68, 0.68, 0.3, 0.3])
            inset.imshow(_legend_image(rec.centre_grids, palette)
                         if rec.kind == 'consensus' or len(rec.centre_grids) == 1
                         else palette[None], interpolation='nearest')
            inset.set_xticks([])
            inset.set_yticks([])
        for ax in axes[ri]:
            ax.set_xticks([])
            ax.set_yticks([])
        for ci in range(len(recs) + 1, ncols):
            axes[ri, ci].axis('off')
    fig.suptitle((title + '\n' if title else '') +
                 'colour = arg-max centre (inset: centre grid, each cell in the colour of the '
                 'centre initialised there); opacity = membership of that centre '
                 '(hard partitional: opaque)', fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return maps
