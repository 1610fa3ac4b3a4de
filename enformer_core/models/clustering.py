"""Differentiable base clusterings and the consensus aggregation (EnFormer's token mixer).

One implementation of a base clustering, four assignment rules, one subclass each
(``docs/architecture.md``, "EnsembleClustering"):

=====================  ======================================  ========================
class                  ``A`` from similarities ``S``            normaliser of centre m
=====================  ======================================  ========================
PartitionalClustering  ``sigmoid(S) * one_hot``                ``sum_n Hm + 1``
FuzzyClustering        ``softmax_m(S)``                        ``sum_n A + 1e-7``
PossibilisticClustering ``sigmoid(S)``                         ``sum_n A + 1e-7``
ProbabilisticClustering ``softmax_m(a L + b + log_prior)``     ``sum_n A + 1e-7``
=====================  ======================================  ========================

An ensemble is a list of configs, so a new ensemble (three rules per block, other grids) is a
config change::

    base_clusterings=[dict(type='FuzzyClustering', grid=6),
                      dict(type='PartitionalClustering', grid=5),
                      dict(type='ProbabilisticClustering', grid=4)]
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import clustering as ops
from ..ops import fused
from .layers import LayerScaleLinear, RecordsAssignment, to_2tuple

CLUSTERINGS: Dict[str, Type['BaseClustering']] = {}


def register_clustering(cls):
    CLUSTERINGS[cls.__name__] = cls
    return cls


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The clustering maths runs in float32 for bf16/fp16 models (softmax, argmax and the
    normalisers over thousands of points): cheaper on CPU than bf16's small-tensor kernels,
    and closer to the fp32 model."""
    return torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype


def contiguous_as(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` as a contiguous tensor of ``dtype``: one copy (and cast) at most."""
    if x.dtype == dtype:
        return x.contiguous()
    return torch.empty(x.shape, dtype=dtype, device=x.device).copy_(x)


def pool_tokens(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Adaptive average pool of a channels-last ``(B, H, W, C)`` map to ``size`` -> ``(B, h*w, C)``.

    Pools through PyTorch's channels-last kernel (vectorised over C, many times faster on CPU
    than pooling head-folded ``(B*heads, d, H, W)`` planes) and skips the identity pool.
    """
    b, hh, ww, c = x.shape
    if (hh, ww) == tuple(size):
        return x.reshape(b, hh * ww, c)
    # a channels-last view in and out; under autograd the pooled map is not kept for backward
    y = fused.adaptive_avg_pool_nchw(x.permute(0, 3, 1, 2), tuple(size))
    return y.permute(0, 2, 3, 1).reshape(b, size[0] * size[1], c)


class BaseClustering(RecordsAssignment, nn.Module):
    """One differentiable clustering step over the points of one head.

    A subclass is one assignment rule: it overrides :meth:`assign` (and, for the GMM E-step,
    :meth:`similarity`); everything else (initial centres, similarity scale and offset per
    centre, the centre update) is shared.

    Args:
        grid: centre grid ``(h, w)`` (or an int); the ``M = h*w`` initial centres are the
            adaptive average pool of the key/value maps onto that grid.
        head_dim: width ``d`` of the points.
        centre_bias: add a learnt per-centre bias followed by ``SiLU(Linear)`` to the initial
            centres (separately for keys and values); unused by the released variants.
        gumbel: partitional rule only: straight-through Gumbel sampling in training
            (as published); ``False`` uses argmax in training as well.
    """

    def __init__(self, grid, head_dim: int, centre_bias: bool = False, gumbel: bool = True):
        super().__init__()
        if type(self).assign is BaseClustering.assign:
            raise TypeError('BaseClustering is abstract: use PartitionalClustering, '
                            'FuzzyClustering, PossibilisticClustering or '
                            'ProbabilisticClustering')
        self.grid = to_2tuple(grid)
        self.num_centres = self.grid[0] * self.grid[1]
        self.head_dim = head_dim
        self.gumbel = gumbel
        m = self.num_centres
        self.sim_alpha = nn.Parameter(torch.ones(m))
        self.sim_beta = nn.Parameter(torch.zeros(m))
        self.centre_bias = centre_bias
        if centre_bias:
            self.key_centre_bias = nn.Parameter(torch.zeros(m, head_dim))
            self.key_centre_proj = nn.Linear(head_dim, head_dim)
            self.value_centre_bias = nn.Parameter(torch.zeros(m, head_dim))
            self.value_centre_proj = nn.Linear(head_dim, head_dim)

    @property
    def rule(self) -> str:
        """The rule's name: ``'partitional'``, ``'fuzzy'``, ... (for labels and reports)."""
        return type(self).__name__.replace('Clustering', '').lower()

    def extra_repr(self) -> str:
        return f'grid={self.grid}, head_dim={self.head_dim}'

    def similarity(self, centres: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """``S[m, n] = alpha[m] cos(c_m, p_n) + beta[m]``, ``(b, M, N)``."""
        return ops.scaled_cosine_similarity(centres, points, self.sim_alpha, self.sim_beta)

    def assign(self, sim: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Weights ``A`` ``(b, M, N)`` and per-centre normaliser ``(b, M)`` from ``S``."""
        raise NotImplementedError

    def membership(self, sim: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """What the visualisation draws: the memberships ``(b, M, N)``."""
        return weights

    def forward(self, centres: torch.Tensor, init_values: torch.Tensor,
                key_points: torch.Tensor, value_points: torch.Tensor) -> torch.Tensor:
        """Cluster ``key_points`` and return the updated centres ``(b, M, d)``.

        ``centres``/``init_values`` are the ``(b, M, d)`` initial key/value centres (the
        adaptive average pool of the full-resolution key/value maps onto ``self.grid``, see
        :class:`EnsembleClustering`); ``key_points``/``value_points`` are the ``(b, N, d)``
        points that are clustered (agents or all pixels).
        """
        if self.centre_bias:  # (parameters cast to the clustering's compute dtype)
            centres = F.silu(F.linear(centres + self.key_centre_bias,
                                      self.key_centre_proj.weight.to(centres.dtype),
                                      self.key_centre_proj.bias.to(centres.dtype)))
            init_values = F.silu(F.linear(init_values + self.value_centre_bias,
                                          self.value_centre_proj.weight.to(centres.dtype),
                                          self.value_centre_proj.bias.to(centres.dtype)))
        sim = self.similarity(centres, key_points)
        weights, denom = self.assign(sim)
        if self.record:
            self.keep_assignment(self.membership(sim, weights))
        return ops.aggregate(weights, value_points, init_values, denom)


@register_clustering
class PartitionalClustering(BaseClustering):
    """k-means-like hard assignment (straight-through Gumbel in training, argmax in eval)."""

    def assign(self, sim):
        return ops.hard_assign(sim, self.training, self.gumbel)

    def membership(self, sim, weights):
        return ops.hard_mask(sim, training=False)


@register_clustering
class FuzzyClustering(BaseClustering):
    """Fuzzy-c-means-like soft assignment (softmax over centres)."""

    def assign(self, sim):
        return ops.softmax_assign(sim)


@register_clustering
class PossibilisticClustering(BaseClustering):
    """Possibilistic-c-means-like assignment (independent sigmoid memberships)."""

    def assign(self, sim):
        return ops.sigmoid_assign(sim)


@register_clustering
class ProbabilisticClustering(BaseClustering):
    """Diagonal-GMM E-step with learnt log-priors and log-variances:
    ``A = softmax_m(alpha L + beta + log_prior)`` on the Gaussian log-likelihoods ``L``."""

    def __init__(self, grid, head_dim: int, **kwargs):
        super().__init__(grid, head_dim, **kwargs)
        self.log_priors = nn.Parameter(torch.zeros(self.num_centres))
        self.log_vars = nn.Parameter(torch.zeros(self.num_centres, head_dim))

    def similarity(self, centres, points):
        ll = ops.gaussian_log_likelihood(centres, points, self.log_vars)
        return self.sim_alpha.view(1, -1, 1) * ll + self.sim_beta.view(1, -1, 1) + \
            self.log_priors.view(1, -1, 1)

    def assign(self, sim):
        return ops.softmax_assign(sim)


def build_clustering(cfg: dict, head_dim: int, gumbel: bool = True) -> BaseClustering:
    """A base clustering from ``dict(type='FuzzyClustering', grid=6, ...)``."""
    cfg = copy.deepcopy(dict(cfg))
    kind = cfg.pop('type', None)
    if kind not in CLUSTERINGS:
        raise ValueError(f'unknown base clustering {kind!r}; available: {sorted(CLUSTERINGS)}')
    cfg.setdefault('gumbel', gumbel)
    return CLUSTERINGS[kind](head_dim=head_dim, **cfg)


class ConsensusAggregation(RecordsAssignment, nn.Module):
    """Fuse the centres of all base clusterings back into the points:
    ``Y[n] = sum_m softmax_m(a[m] cos(Z[m], q_n) + c[m]) Z[m]``."""

    def __init__(self, num_centres: int):
        super().__init__()
        self.num_centres = num_centres
        self.sim_alpha = nn.Parameter(torch.ones(num_centres))
        self.sim_beta = nn.Parameter(torch.zeros(num_centres))

    def forward(self, centres: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        if self.record:
            g = ops.cosine_similarity(centres, queries) * self.sim_alpha.view(1, -1, 1) \
                + self.sim_beta.view(1, -1, 1)
            self.keep_assignment(g.softmax(dim=1))
        return ops.consensus(centres, queries, self.sim_alpha, self.sim_beta)


class EnsembleClustering(nn.Module):
    """EnFormer's token mixer: K base clusterings + consensus aggregation + dispatch.

    Works on channels-last ``(B, H, W, C)`` maps.  ``agents`` (stages 0-1) pools the points
    to an ``a_h x a_w`` grid before clustering and bilinearly upsamples the result.

    ``clamp_agents``: the published model always pools to the agent grid, so a map smaller
    than the grid (an 8x8 stage-1 map of a 64 px image against 14x14 agents) is pooled *up*
    and clusters duplicated points at extra cost.  With ``clamp_agents=True`` the grid is
    clamped to the map per axis, and a map no larger than the grid clusters its pixels
    directly.  Maps larger than the grid (every published setting at its published input
    size) are unaffected; the parameters are the same either way.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int,
                 base_clusterings: Sequence[dict], agents=None,
                 layer_scale_init_value: float = 1e-6, deploy: bool = False,
                 gumbel: bool = True, clamp_agents: bool = False):
        super().__init__()
        if len(base_clusterings) == 0:
            raise ValueError('EnsembleClustering needs at least one base clustering')
        self.num_heads = num_heads
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.inner_dim = inner
        self.agents = None if agents is None else to_2tuple(agents)
        self.clamp_agents = clamp_agents
        self.proj_in = nn.Linear(dim, (1 + 2 * len(base_clusterings)) * inner)
        self.clusterings = nn.ModuleList(
            [build_clustering(c, head_dim, gumbel) for c in base_clusterings])
        self.consensus = ConsensusAggregation(sum(c.num_centres for c in self.clusterings))
        self.proj_out = LayerScaleLinear(inner, dim, layer_scale_init_value, deploy)

    def _fold_heads(self, tokens: torch.Tensor, first: int, count: int) -> List[torch.Tensor]:
        """Chunks ``first .. first+count-1`` of ``(B, N, (1+2K)*D)`` tokens as ``(B*heads, N, d)``.

        One copy for all of them (chunk-major; inside a chunk channel = head*d + j).
        """
        b, n, width = tokens.shape
        chunks = width // self.inner_dim  # explicit, not -1: a batch of 0 images has no size
        t = tokens.view(b, n, chunks, self.num_heads, self.head_dim)
        if (first, count) != (0, chunks):  # (a full slice would cost a zero-fill in backward)
            t = t[:, :, first:first + count]
        t = contiguous_as(t.permute(2, 0, 3, 1, 4), compute_dtype(tokens))
        return list(t.view(count, b * self.num_heads, n, self.head_dim).unbind(0))

    def _points_and_initial_centres(self, x: torch.Tensor, grid: Optional[Tuple[int, int]]):
        """The ``(B*heads, N', d)`` points of every chunk ``[P | K_1 | V_1 | ...]`` (agents or
        every pixel) and each clustering's initial key/value centres (the adaptive average
        pool of the full-resolution key/value maps onto its grid).

        The projection is affine and every pooling weight sums to one, so pooling the
        ``C``-channel input and projecting the pooled tokens equals projecting the full map
        and pooling it (up to float rounding): agent stages project 196 tokens instead of
        every pixel, and centres project a few dozen tokens.  Traced (FLOP counting,
        export), the published order runs: project the full map, then pool.
        """
        hh, ww = x.shape[1:3]
        chunks = 1 + 2 * len(self.clusterings)
        weight, bias = self.proj_in.weight, self.proj_in.bias
        if fused.tracing():
            proj = fused.linear(x, weight, bias)  # (B, H, W, [P | K_1 | V_1 | ...])
            points = self._fold_heads(pool_tokens(proj, grid or (hh, ww)), 0, chunks)
            return points, [self._fold_heads(pool_tokens(proj, c.grid), 1 + 2 * k, 2)
                            for k, c in enumerate(self.clusterings)]
        points = self._fold_heads(fused.linear(pool_tokens(x, grid or (hh, ww)), weight, bias),
                                  0, chunks)
        return points, [self._fold_heads(fused.linear(pool_tokens(x, c.grid), weight, bias),
                                         1 + 2 * k, 2) for k, c in enumerate(self.clusterings)]

    def agent_grid(self, height: int, width: int) -> Optional[Tuple[int, int]]:
        """The agent grid used for an ``height x width`` map, ``None`` for "every pixel"."""
        if self.agents is None:
            return None
        if not self.clamp_agents:
            return self.agents
        grid = (min(self.agents[0], height), min(self.agents[1], width))
        return None if grid == (height, width) else grid

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``residual + mixer(x)`` for a channels-last ``(B, H, W, C)`` map."""
        b, hh, ww, _ = x.shape
        grid = self.agent_grid(hh, ww)
        points, inits = self._points_and_initial_centres(x, grid)
        centres = []
        for k, clustering in enumerate(self.clusterings):
            init_keys, init_values = inits[k]
            centres.append(clustering(init_keys, init_values, points[1 + 2 * k],
                                      points[2 + 2 * k]))
        y = self.consensus(torch.cat(centres, dim=1), points[0])  # (B*heads, N', d)
        gh, gw = grid or (hh, ww)
        y = y.view(b, self.num_heads, gh, gw, self.head_dim).permute(0, 2, 3, 1, 4)
        y = contiguous_as(y, x.dtype).view(b, gh, gw, self.inner_dim)
        if grid is None:
            return self.proj_out(y, residual)
        # dispatch: bilinear upsampling of the agents (channels-last).  Both are affine and
        # the bilinear weights sum to one, so in inference the projection goes first, on the
        # agents (16x fewer rows at 56x56); traced and autocast runs keep the published order
        if fused.inference(y) and not fused.autocast(y):
            up = F.interpolate(self.proj_out(y).permute(0, 3, 1, 2), size=(hh, ww),
                               mode='bilinear', align_corners=False).permute(0, 2, 3, 1)
            return up if residual is None else up.add_(residual)
        y = F.interpolate(y.permute(0, 3, 1, 2), size=(hh, ww), mode='bilinear',
                          align_corners=False).permute(0, 2, 3, 1)
        return self.proj_out(y, residual)
