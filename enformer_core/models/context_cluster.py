"""Context Clusters (CoC, ICLR 2023) on the shared MetaFormer skeleton.

Mixer (``docs/baselines.md``): project points ``P = f(X)`` and values ``V = v(X)``, split
into heads, partition every map into ``fold x fold`` regions, propose ``p x p`` centres per
region by average pooling, ``S = sigmoid(beta + alpha cos(c, p))``, assign every point to its
most similar centre, aggregate ``g_i = (v_i + sum_j S_ij v_j) / (1 + sum_j S_ij)`` and dispatch
``p'_j = S_i(j)j g_i(j)``.  Because the assignment is one-hot, aggregation is a segment sum and
dispatch a gather (O(N d), :func:`enformer_core.ops.clustering.segment_aggregate`), never the
published ``(M, N, d)`` broadcast.

**Ours:** any input size works: maps are padded to a multiple of the fold and the padded
points are masked, so they neither join a cluster nor move a centre (the published code
asserts divisibility).  The region helpers here are shared with FEC's cluster pooling.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint import PublishedLayout
from ..ops.clustering import cosine_similarity, gather_dispatch, segment_aggregate
from ..registry import MODELS
from .classifier import register_variants
from .layers import RecordsAssignment, to_2tuple
from .metaformer import MetaFormerBackbone


# --------------------------------------------------------------------------------------
# region partition with padding + masks (shared with FEC)
# --------------------------------------------------------------------------------------
def pad_to_multiple(x: torch.Tensor, multiple: Tuple[int, int]
                    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Zero-pad a ``(b, c, H, W)`` map at the bottom/right to multiples of ``multiple``.

    Returns the padded map and a ``(1, 1, Hp, Wp)`` float mask of the real pixels, or
    ``None`` when no padding was needed.
    """
    h, w = x.shape[-2:]
    ph = (-h) % multiple[0]
    pw = (-w) % multiple[1]
    if ph == 0 and pw == 0:
        return x, None
    mask = x.new_ones(1, 1, h, w)
    return F.pad(x, (0, pw, 0, ph)), F.pad(mask, (0, pw, 0, ph))


def fold_regions(x: torch.Tensor, fold: Tuple[int, int]) -> torch.Tensor:
    """``(b, c, fh*h, fw*w) -> (b*fh*fw, c, h, w)``: each region becomes a batch entry."""
    fh, fw = fold
    if fh == 1 and fw == 1:
        return x
    b, c, hh, ww = x.shape
    h, w = hh // fh, ww // fw
    x = x.reshape(b, c, fh, h, fw, w).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b * fh * fw, c, h, w)


def unfold_regions(x: torch.Tensor, fold: Tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`fold_regions`."""
    fh, fw = fold
    if fh == 1 and fw == 1:
        return x
    bf, c, h, w = x.shape
    b = bf // (fh * fw)
    x = x.reshape(b, fh, fw, c, h, w).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, fh * h, fw * w)


def masked_adaptive_avg_pool(x: torch.Tensor, mask: Optional[torch.Tensor],
                             size: Tuple[int, int]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Adaptive average pooling over the real (``mask == 1``) pixels only.

    Returns the pooled map and a ``(b, 1, *size)`` bool map of the bins that contain at least
    one real pixel (``None`` without a mask).  Without a mask this is exactly
    ``F.adaptive_avg_pool2d``.
    """
    if mask is None:
        return F.adaptive_avg_pool2d(x, size), None
    num = F.adaptive_avg_pool2d(x * mask, size)
    den = F.adaptive_avg_pool2d(mask, size)
    return num / den.clamp_min(1e-6), den > 0


def partition(x: torch.Tensor, fold: Tuple[int, int], multiple: Tuple[int, int] = (1, 1)
              ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Pad ``x`` so every one of ``fold`` regions has a side divisible by ``multiple``, then
    fold the regions into the batch.  Returns ``(regions, region_mask)``; ``region_mask`` is
    ``(b*fh*fw, 1, h, w)`` (or ``None`` when nothing was padded)."""
    x, mask = pad_to_multiple(x, (fold[0] * multiple[0], fold[1] * multiple[1]))
    regions = fold_regions(x, fold)
    if mask is None:
        return regions, None
    rmask = fold_regions(mask, fold)  # (fh*fw, 1, h, w), batch-major folding below
    return regions, rmask.repeat(x.shape[0], 1, 1, 1)


# --------------------------------------------------------------------------------------
# the Context Cluster mixer (also FEC's, with unweighted aggregation)
# --------------------------------------------------------------------------------------
class ContextClusterMixer(RecordsAssignment, nn.Module):
    """Region-wise hard clustering of points (CoC) on a channels-first map.

    Args:
        dim: input/output channels.
        num_heads, head_dim: ``f``/``v`` project to ``num_heads * head_dim`` channels.
        proposal: ``p`` (or ``(ph, pw)``): centres per region proposed by average pooling.
        fold: ``fold`` (or ``(fh, fw)``) regions per side; 1 clusters the whole map.
        weighted: CoC weights the aggregation by the similarity; FEC (``False``) averages.
        use_scatter: segment sum through torch-scatter (``None``: when installed).
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int,
                 proposal: Union[int, Sequence[int]] = 2, fold: Union[int, Sequence[int]] = 1,
                 weighted: bool = True, use_scatter: Optional[bool] = None):
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.proposal = to_2tuple(proposal)
        self.fold = to_2tuple(fold)
        self.weighted = weighted
        self.use_scatter = use_scatter
        self.sim_alpha = nn.Parameter(torch.ones(1))
        self.sim_beta = nn.Parameter(torch.zeros(1))
        self.f = nn.Conv2d(dim, inner, 1)
        self.v = nn.Conv2d(dim, inner, 1)
        self.proj = nn.Conv2d(inner, dim, 1)
        self.num_centres = self.proposal[0] * self.proposal[1]

    def extra_repr(self) -> str:
        return (f'heads={self.num_heads}, head_dim={self.head_dim}, proposal={self.proposal}, '
                f'fold={self.fold}, weighted={self.weighted}')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        e, d = self.num_heads, self.head_dim
        points = self.f(x).reshape(b * e, d, h, w)
        values = self.v(x).reshape(b * e, d, h, w)
        points, mask = partition(points, self.fold)
        values, _ = partition(values, self.fold)
        bb, _, rh, rw = points.shape
        centres, centre_ok = masked_adaptive_avg_pool(points, mask, self.proposal)
        value_centres, _ = masked_adaptive_avg_pool(values, mask, self.proposal)

        p = points.flatten(2).transpose(1, 2)  # (bb, N, d)
        v = values.flatten(2).transpose(1, 2)
        c = centres.flatten(2).transpose(1, 2)  # (bb, M, d)
        vc = value_centres.flatten(2).transpose(1, 2)
        sim = torch.sigmoid(self.sim_beta + self.sim_alpha * cosine_similarity(c, p))  # bb M N
        if centre_ok is not None:  # a bin of padding only is no centre
            sim = sim.masked_fill(~centre_ok.flatten(1).unsqueeze(-1), -1.0)
        s, index = sim.max(dim=1)  # hard assignment: (bb, N)
        point_ok = None if mask is None else mask.flatten(1)
        if self.weighted:
            weight = s if point_ok is None else s * point_ok
        else:
            weight = point_ok  # None: every point counts once
        g = segment_aggregate(v, index, weight, vc, self.use_scatter)  # (bb, M, d)
        out = gather_dispatch(g, index, s)  # (bb, N, d)
        self.keep_assignment(index)  # (b*heads*regions, N), for pictures
        out = out.transpose(1, 2).reshape(bb, d, rh, rw)
        out = unfold_regions(out, self.fold)[:, :, :h, :w]
        return self.proj(out.reshape(b, e * d, h, w))


#: the official CoC checkpoints' keys <-> ours (FEC's layout extends it, see fec.py).
#: Blocks and reducers share one list there: ``network.{2i}`` is stage i, ``network.{2i+1}``
#: the reducer after it; dense checkpoints name the output norms ``norm{2i}``.
COC_LAYOUT_PAIRS = [
    ('patch_embed.proj.{p:any}', 'backbone.stem.{p:any}'),
    ('network.{s:2n}.{b}.token_mixer.{p:any}', 'backbone.stages.{s}.blocks.{b}.mixer.{p:any}'),
    ('network.{s:2n}.{b}.{p:any}', 'backbone.stages.{s}.blocks.{b}.{p:any}'),
    ('network.{s:2n+1}.proj.{p:any}', 'backbone.stages.{s}.downsample.{p:any}'),
]
COC_CLASSIFIER_PAIRS = [('norm.{p:any}', 'backbone.post_norm3.{p:any}'),
                        ('head.{p:any}', 'head.fc.{p:any}')]
COC_DENSE_PAIRS = [('norm{i:2n}.{p:any}', 'backbone.post_norm{i}.{p:any}')]
COC_SIGNATURE = r'(patch_embed\.proj\.|network\.\d+\.)'
COC_LAYOUT = PublishedLayout('Context Clusters', COC_SIGNATURE, COC_LAYOUT_PAIRS,
                             COC_CLASSIFIER_PAIRS, COC_DENSE_PAIRS)


def _arch(dims, depths, heads, head_dim, proposal, fold) -> dict:
    return dict(embed_dims=dims, depths=depths, mlp_ratios=[8, 8, 4, 4], num_heads=heads,
                head_dim=head_dim, proposal=proposal, fold=fold)


@MODELS.register_module()
class ContextCluster(MetaFormerBackbone):
    """Context Cluster backbone (``coc_tiny``, ``coc_tiny_plain``, ``coc_small``,
    ``coc_medium``); shared options in :class:`MetaFormerBackbone`.

    Args:
        arch: ``'tiny'``, ``'tiny_plain'``, ``'small'``, ``'medium'`` or a dict with
            ``embed_dims``, ``depths``, ``mlp_ratios``, ``num_heads``, ``head_dim``,
            ``proposal`` (per stage) and ``fold`` (per stage).
        proposal: override the centres per region, an int ``p`` (``p x p``) or one per
            stage; the dense variants use 2, 5 or 7 (4/25/49 centres per region).
        fold: override the regions per side (int or one per stage).
        use_scatter: segment sums through torch-scatter (``None``: when installed).
    """

    #: embed_dims, depths, num_heads, head_dim, proposal (p per side), fold (regions per side);
    #: MLP ratios 8, 8, 4, 4 in every variant
    arch_settings = {
        'tiny': _arch([32, 64, 196, 320], [3, 4, 5, 2], [4, 4, 8, 8], 24, [2] * 4, [8, 4, 2, 1]),
        'tiny_plain': _arch([32, 64, 196, 320], [3, 4, 5, 2], [4, 4, 8, 8], 24, [4, 4, 2, 2],
                            [1] * 4),
        'small': _arch([64, 128, 320, 512], [2, 2, 6, 2], [4, 4, 8, 8], 32, [2] * 4, [8, 4, 2, 1]),
        'medium': _arch([64, 128, 320, 512], [4, 4, 12, 4], [6, 6, 12, 12], 32, [2] * 4,
                        [8, 4, 2, 1]),
    }
    arch_aliases = {'t': 'tiny', 's': 'small', 'm': 'medium', 'tiny-plain': 'tiny_plain',
                    'plain': 'tiny_plain', 'coc_tiny_plain': 'tiny_plain'}
    arch_keys = MetaFormerBackbone.arch_keys + ('proposal', 'fold')
    per_stage_keys = MetaFormerBackbone.per_stage_keys + ('proposal', 'fold')
    published_layout = COC_LAYOUT
    #: the aggregation weights each point by its similarity (FEC: an unweighted mean)
    weighted_aggregation = True

    def __init__(self, arch: Union[str, dict] = 'tiny', proposal=None, fold=None,
                 use_scatter: Optional[bool] = None, clustering=None, overrides=None,
                 options=None, **kwargs):
        super().__init__(arch, clustering,
                         overrides=dict(overrides or {}, proposal=proposal, fold=fold),
                         options=dict(options or {}, use_scatter=use_scatter), **kwargs)
        self.build()

    def build_mixer(self, stage: int, index: int) -> nn.Module:
        a = self.arch
        return ContextClusterMixer(a['embed_dims'][stage], a['num_heads'][stage], a['head_dim'],
                                   a['proposal'][stage], a['fold'][stage],
                                   weighted=self.weighted_aggregation,
                                   use_scatter=self.use_scatter)


# the plain-PyTorch classifiers: create_model('coc_tiny'), ...
register_variants(ContextCluster, {'coc_tiny': 'tiny', 'coc_tiny_plain': 'tiny_plain',
                                   'coc_small': 'small', 'coc_medium': 'medium'})
