"""FEC (neural clustering, CVPR 2024) on the shared MetaFormer skeleton.

Two changes to Context Clusters (``docs/baselines.md``):

1. the mixer aggregates without similarity weights, ``g_i = (v_i + sum_{j in i} v_j) /
   (1 + |i|)`` (:class:`~enformer_core.models.context_cluster.ContextClusterMixer` with
   ``weighted=False``; dispatch still scales by the similarity);
2. **cluster pooling** replaces the strided-conv reducer: centres are the 2x2-cell averages of
   ``F = conv_f(X)`` (and of ``V = conv_v(X)``), every point joins its most cosine-similar
   centre, ``pooled_i = (v_i + sum_{j in i} v_j) / (1 + |i|)`` and the output is
   ``conv_skip(X) + GN(pooled)``.

Pooling modes (:class:`ClusterPooling`):

* ``'global'`` (published, default): every point against every centre, ``N x N/4``
  similarities.  ``pool_fold > 1`` splits the map into regions first (the published detection
  variants use 2x2 regions).  Cost grows with the square of the pixel count.
* ``'local'`` (ours, for high resolution): every point against the centres of the
  ``pool_window x pool_window`` cells around its own cell; linear cost, same parameters.

As published, ``conv_f`` only feeds the argmax and therefore receives no gradient (dead
weights, kept so the published checkpoints load; DDP needs ``find_unused_parameters=True``).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint import PublishedLayout
from ..ops.clustering import argmax_centres, cosine_similarity, segment_aggregate
from ..registry import MODELS
from .classifier import register_variants
from .context_cluster import (COC_CLASSIFIER_PAIRS, COC_DENSE_PAIRS, COC_LAYOUT_PAIRS,
                              COC_SIGNATURE, ContextCluster, masked_adaptive_avg_pool,
                              pad_to_multiple, partition, unfold_regions)
from .layers import RecordsAssignment, as_list, to_2tuple

POOL_MODES = ('global', 'local')


class ClusterPooling(RecordsAssignment, nn.Module):
    """FEC's reducer: cluster ``(B, C_in, H, W)`` points into ``ceil(H/2) x ceil(W/2)``
    centres and return ``conv_skip(X) + GN(pooled)`` of shape ``(B, C_out, ceil(H/2),
    ceil(W/2))``.

    Odd sides are padded to even and the padded points masked (they join no centre), so a
    centre is the average of the real pixels of its 2x2 cell; at even sizes this is exactly
    the published ``AdaptiveAvgPool2d((H/2, W/2))``.
    """

    def __init__(self, in_channels: int, out_channels: int, mode: str = 'global',
                 fold: Union[int, Sequence[int]] = 1, window: int = 3,
                 use_scatter: Optional[bool] = None):
        super().__init__()
        if mode not in POOL_MODES:
            raise ValueError(f'unknown cluster pooling mode {mode!r}; choose one of {POOL_MODES}')
        if window < 1 or window % 2 == 0:
            raise ValueError(f'pool window must be a positive odd number, got {window}')
        self.mode = mode
        self.fold = to_2tuple(fold)
        self.window = window
        self.use_scatter = use_scatter
        self.conv_f = nn.Conv2d(in_channels, out_channels, 1)
        self.conv_v = nn.Conv2d(in_channels, out_channels, 1)
        self.conv_skip = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.norm = nn.GroupNorm(1, out_channels)

    def extra_repr(self) -> str:
        return f'mode={self.mode}, fold={self.fold}, window={self.window}'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.conv_skip(x)
        f, v = self.conv_f(x), self.conv_v(x)
        if self.mode == 'local':
            pooled = self._local(f, v)
        else:
            pooled = self._global(f, v)
        return skip + self.norm(pooled[:, :, :skip.shape[2], :skip.shape[3]])

    def _global(self, f: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        f, mask = partition(f, self.fold, (2, 2))
        v, _ = partition(v, self.fold, (2, 2))
        bb, c, h, w = f.shape
        size = (h // 2, w // 2)
        centres, ok = masked_adaptive_avg_pool(f, mask, size)
        vc, _ = masked_adaptive_avg_pool(v, mask, size)
        sim = cosine_similarity(centres.flatten(2).transpose(1, 2), f.flatten(2).transpose(1, 2))
        if ok is not None:  # cells of padding only (regions past the border) are no centre
            sim = sim.masked_fill(~ok.flatten(1).unsqueeze(-1), -2.0)
        index = argmax_centres(sim).squeeze(1)
        self.keep_assignment(index)
        weight = None if mask is None else mask.flatten(1)
        pooled = segment_aggregate(v.flatten(2).transpose(1, 2), index, weight,
                                   vc.flatten(2).transpose(1, 2), self.use_scatter)
        pooled = pooled.transpose(1, 2).reshape(bb, c, *size)
        return unfold_regions(pooled, self.fold)

    def _local(self, f: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        f, mask = pad_to_multiple(f, (2, 2))
        v, _ = pad_to_multiple(v, (2, 2))
        b, c, h, w = f.shape
        h2, w2 = h // 2, w // 2
        k, r = self.window, self.window // 2
        centres, _ = masked_adaptive_avg_pool(f, mask, (h2, w2))  # every cell has a real pixel
        vc, _ = masked_adaptive_avg_pool(v, mask, (h2, w2))
        # candidates: the k x k cells around each cell (zero-padded outside the map)
        cand = F.unfold(F.normalize(centres, dim=1), k, padding=r).view(b, c, k * k, h2, w2)
        inside = F.unfold(centres.new_ones(1, 1, h2, w2), k, padding=r).view(1, k * k, h2, 1,
                                                                               w2, 1)
        pts = F.normalize(f, dim=1).view(b, c, h2, 2, w2, 2)
        sim = torch.einsum('bchpwq,bckhw->bkhpwq', pts, cand)
        sim = sim.masked_fill(inside == 0, -2.0)
        offset = sim.argmax(dim=1)  # (b, h2, 2, w2, 2) in [0, k*k)
        cy = torch.arange(h2, device=f.device).view(1, h2, 1, 1, 1)
        cx = torch.arange(w2, device=f.device).view(1, 1, 1, w2, 1)
        index = (cy + offset // k - r) * w2 + (cx + offset % k - r)
        index = index.reshape(b, h * w)  # (h2, 2, w2, 2) is the row-major point order
        self.keep_assignment(index)
        weight = None if mask is None else mask.flatten(1).expand(b, -1)
        pooled = segment_aggregate(v.flatten(2).transpose(1, 2), index, weight,
                                   vc.flatten(2).transpose(1, 2), self.use_scatter)
        return pooled.transpose(1, 2).reshape(b, c, h2, w2)


#: the official FEC checkpoints' keys <-> ours: CoC's layout plus the cluster-pooling reducer
FEC_LAYOUT = PublishedLayout(
    'FEC', COC_SIGNATURE,
    [('network.{s:2n+1}.norm2.{p:any}', 'backbone.stages.{s}.downsample.norm.{p:any}'),
     ('network.{s:2n+1}.conv_f.{p:any}', 'backbone.stages.{s}.downsample.conv_f.{p:any}'),
     ('network.{s:2n+1}.conv_v.{p:any}', 'backbone.stages.{s}.downsample.conv_v.{p:any}'),
     ('network.{s:2n+1}.conv_skip.{p:any}', 'backbone.stages.{s}.downsample.conv_skip.{p:any}'),
     ] + COC_LAYOUT_PAIRS,
    COC_CLASSIFIER_PAIRS, COC_DENSE_PAIRS)


@MODELS.register_module()
class FEC(ContextCluster):
    """FEC backbone (``fec_small``, ``fec_base``, ``fec_large``): Context Clusters with an
    unweighted aggregation and cluster pooling between the stages.

    Args (besides :class:`MetaFormerBackbone`'s):
        arch: ``'small'``, ``'base'``, ``'large'`` or a dict with ``embed_dims``, ``depths``,
            ``mlp_ratios``, ``num_heads`` and ``head_dim``.
        clustering: ``'classification'`` (centres 4,4,2,2 per side, global), ``'segmentation'``
            (10,10,5,5, global), ``'detection'`` (7,7,7,7 with 2,2,1,1 regions per side), or a
            dict with ``proposal`` and ``fold`` (one per stage).
        proposal / fold: per-stage overrides of the preset.
        pool_mode: ``'global'`` (published) or ``'local'`` (ours, linear cost).
        pool_fold: regions per side of the global cluster pooling (int or one per reducer);
            ``None`` takes the preset's (1; the published detection variants use 2).
        pool_window: candidate cells per side of the local pooling (odd).
        use_scatter: segment sums through torch-scatter (``None``: when installed).
    """

    arch_settings = {
        'small': dict(embed_dims=[32, 64, 196, 320], depths=[3, 4, 5, 2],
                      mlp_ratios=[8, 8, 4, 4], num_heads=[4, 4, 8, 8], head_dim=24),
        'base': dict(embed_dims=[64, 128, 320, 512], depths=[2, 2, 6, 2],
                     mlp_ratios=[8, 8, 4, 4], num_heads=[4, 4, 8, 8], head_dim=32),
        'large': dict(embed_dims=[64, 128, 320, 512], depths=[4, 4, 12, 4],
                      mlp_ratios=[8, 8, 4, 4], num_heads=[6, 6, 12, 12], head_dim=32),
    }
    arch_aliases = {'s': 'small', 'b': 'base', 'l': 'large'}
    clustering_presets = {
        'classification': dict(proposal=[4, 4, 2, 2], fold=[1, 1, 1, 1], pool_fold=1),
        'segmentation': dict(proposal=[10, 10, 5, 5], fold=[1, 1, 1, 1], pool_fold=1),
        'detection': dict(proposal=[7, 7, 7, 7], fold=[2, 2, 1, 1], pool_fold=2),
    }
    published_layout = FEC_LAYOUT
    weighted_aggregation = False

    def __init__(self, arch: Union[str, dict] = 'small',
                 clustering: Union[str, dict] = 'classification',
                 proposal=None, fold=None, pool_mode: str = 'global', pool_fold=None,
                 pool_window: int = 3, use_scatter: Optional[bool] = None, **kwargs):
        if pool_mode not in POOL_MODES:
            raise ValueError(f'unknown FEC pool_mode {pool_mode!r}; choose one of {POOL_MODES}')
        super().__init__(arch, proposal, fold, use_scatter, clustering=clustering,
                         overrides=dict(pool_fold=pool_fold),
                         options=dict(pool_mode=pool_mode, pool_window=pool_window), **kwargs)

    def build_downsample(self, stage: int) -> nn.Module:
        pool_fold = as_list(self.arch.get('pool_fold', 1), self.num_stages - 1, 'pool_fold')
        return ClusterPooling(self.embed_dims[stage], self.embed_dims[stage + 1],
                              self.pool_mode, pool_fold[stage], self.pool_window,
                              self.use_scatter)


# the plain-PyTorch classifiers: create_model('fec_small'), ...
register_variants(FEC, {'fec_small': 'small', 'fec_base': 'base', 'fec_large': 'large'})
