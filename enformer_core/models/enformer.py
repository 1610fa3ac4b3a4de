"""EnFormer: a vision backbone whose token mixer is ensemble clustering.

The published model (paper: "Deep Ensemble Clustering for Visual Representation Learning";
``docs/architecture.md`` has every shape and number).  Layout (strides 4/8/16/32)::

    image (3) + coordinates (2) -> Stem (s4) -> [Stage i: blocks -> downsample (i < 3)] x 4
    Block:  x + DropPath(EnsembleClustering(LN(x)))  ->  x + DropPath(FFN(LN(x)))
    FFN:    ReparamDWConv(k) -> Linear(C, 4C) -> SiLU -> Linear(4C, C) * gamma

Variants are rows of ``EnFormer.arch_settings``; the clustering settings of each task
(agents, centre grids) are rows of ``EnFormer.clustering_presets``; the official checkpoints'
key layout is ``ENFORMER_LAYOUT`` (converted on load, or by
``tools/model_converters/enformer_to_mmpretrain.py``).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..checkpoint import PublishedLayout
from ..ops import fused
from ..registry import MODELS
from .backbone import ClusterBackbone, drop_path_schedule
from .classifier import register_variants
from .clustering import BaseClustering, ConsensusAggregation, EnsembleClustering
from .layers import CoordinateGrid, DropPath, LayerNorm2d, LayerScaleLinear, ReparamDWConv


class Stem(nn.Module):
    """Conv3x3 s2 -> LN -> SiLU -> Conv3x3 s2 -> LN (stride 4)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, mid, 3, 2, 1)
        self.norm1 = LayerNorm2d(mid)
        self.act = nn.SiLU()
        self.conv2 = nn.Conv2d(mid, out_channels, 3, 2, 1)
        self.norm2 = LayerNorm2d(out_channels)

    def forward(self, x: torch.Tensor, coords: Optional[CoordinateGrid] = None) -> torch.Tensor:
        """``x``: the image with its coordinate channels, or the image alone when ``coords``
        is given (then they are appended here: the static int8 form quantises the image
        and the cached coordinates straight into ``conv1``'s uint8 input)."""
        if fused.inference(x):  # LayerNorm + SiLU in one pass (+ int8 conv2's quantisation)
            h = self.conv1(x) if coords is None else fused.coords_conv(x, coords, self.conv1)
            return self.norm2(fused.norm_silu_conv(h, self.norm1, self.conv2))
        x = x if coords is None else coords(x, channels_last=True)
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


class Downsample(nn.Module):
    """Conv3x3 s2 p1 + channels-first LayerNorm between stages."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.norm = LayerNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class ClusterFFN(nn.Module):
    """ReparamDWConv(k) -> Linear(C, rC) -> SiLU -> Linear(rC, C) * gamma, channels-last I/O."""

    def __init__(self, dim: int, kernel_size: int = 3, ratio: int = 4,
                 layer_scale_init_value: float = 1e-6, deploy: bool = False):
        super().__init__()
        self.dwconv = ReparamDWConv(dim, kernel_size, deploy)
        self.fc1 = nn.Linear(dim, ratio * dim)
        self.act = nn.SiLU()  # (what the FFN applies; forward fuses it with the Linears)
        self.fc2 = LayerScaleLinear(ratio * dim, dim, layer_scale_init_value, deploy)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                norm: Optional[nn.LayerNorm] = None) -> torch.Tensor:
        """``residual + FFN(norm(x))`` (``norm`` optional: given here, the static int8 form
        writes the conv's uint8 input straight from the LayerNorm): one autograd node for
        the two Linears and the SiLU (saves the input and the pre-activation only), fused
        oneDNN calls in inference (in the static int8 form, uint8 from the norm to
        ``fc2``'s input)."""
        if fused.inference(x):
            return fused.conv_mlp(x, self.dwconv, self.fc1.weight, self.fc1.bias,
                                  *self.fc2.folded(), residual, norm)
        x = x if norm is None else fused.layer_norm(x, norm)
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        out = fused.linear_silu_linear(x, self.fc1.weight, self.fc1.bias, *self.fc2.folded())
        return out if residual is None else residual + out


class EnFormerBlock(nn.Module):
    """Pre-norm block on a channels-last ``(B, H, W, C)`` map."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, base_clusterings: Sequence[dict],
                 agents=None, ffn_kernel_size: int = 3, ffn_ratio: int = 4,
                 drop_path: float = 0.0, ffn_drop_path: float = 0.0,
                 layer_scale_init_value: float = 1e-6, deploy: bool = False,
                 gumbel: bool = True, clamp_agents: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mixer = EnsembleClustering(dim, num_heads, head_dim, base_clusterings, agents,
                                        layer_scale_init_value, deploy, gumbel, clamp_agents)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = ClusterFFN(dim, ffn_kernel_size, ffn_ratio, layer_scale_init_value, deploy)
        self.drop_path_mixer = DropPath(drop_path)
        self.drop_path_ffn = DropPath(ffn_drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_path_mixer.p == self.drop_path_ffn.p == 0:
            # no stochastic depth: the residual adds go into the output projections
            x = self.mixer(fused.layer_norm(x, self.norm1), residual=x)
            return self.ffn(x, residual=x, norm=self.norm2)
        x = x + self.drop_path_mixer(self.mixer(self.norm1(x)))
        return x + self.drop_path_ffn(self.ffn(self.norm2(x)))


def _grids(fuzzy, partitional) -> List[dict]:
    return [dict(type='FuzzyClustering', grid=fuzzy),
            dict(type='PartitionalClustering', grid=partitional)]


#: keys inside a block, ``stages.{s}.blocks.{b}.<official>`` <-> ``backbone.stages.{s}.blocks.{b}.<ours>``
_BLOCK_KEYS = [
    ('cluster.sim_{p:any}', 'mixer.consensus.sim_{p:any}'),
    ('cluster.proj.linear.1.{p:any}', 'mixer.proj_in.{p:any}'),
    ('cluster.cluster_module_{k}.{p:any}', 'mixer.clusterings.{k}.{p:any}'),
    ('cluster.proj2.gamma', 'mixer.proj_out.gamma'),
    ('cluster.proj2.linear.1.{p:any}', 'mixer.proj_out.fc.{p:any}'),
    ('ffn.ffn_layers.0.conv.{p:any}', 'ffn.dwconv.conv.{p:any}'),
    ('ffn.ffn_layers.0.bn.{p:any}', 'ffn.dwconv.bn.{p:any}'),
    ('ffn.ffn_layers.0.norm.{p:any}', 'ffn.dwconv.bn_out.{p:any}'),
    ('ffn.ffn_layers.0.conv_{i}.{p:any}', 'ffn.dwconv.branch_convs.{i}.{p:any}'),
    ('ffn.ffn_layers.0.bn_{i}.{p:any}', 'ffn.dwconv.branch_bns.{i}.{p:any}'),
    ('ffn.ffn_layers.1.linear.1.{p:any}', 'ffn.fc1.{p:any}'),
    ('ffn.ffn_layers.3.gamma', 'ffn.fc2.gamma'),
    ('ffn.ffn_layers.3.linear.0.{p:any}', 'ffn.fc2.fc.{p:any}'),
    ('norm{i}.{p:any}', 'norm{i}.{p:any}'),
]
#: the official checkpoints' keys (un-fused and re-parameterised) <-> ours
ENFORMER_LAYOUT = PublishedLayout(
    name='EnFormer',
    signature=r'stages\.\d+\.blocks\.\d+\.cluster\.',
    common=[('stem.aggregate{i}.{p:any}', 'backbone.stem.conv{i}.{p:any}'),
            ('stem.norm{i}.{p:any}', 'backbone.stem.norm{i}.{p:any}'),
            ('stages.{s}.down.aggregate.{p:any}', 'backbone.stages.{s}.downsample.conv.{p:any}'),
            ('stages.{s}.down.norm.{p:any}', 'backbone.stages.{s}.downsample.norm.{p:any}')]
    + [('stages.{s}.blocks.{b}.' + a, 'backbone.stages.{s}.blocks.{b}.' + b)
       for a, b in _BLOCK_KEYS],
    classifier=[('classifier_pre_norm.{p:any}', 'backbone.post_norm3.{p:any}'),
                ('head.{p:any}', 'head.fc.{p:any}')],
    dense=[('post_norm{i}.{p:any}', 'backbone.post_norm{i}.{p:any}')],
)


@MODELS.register_module()
class EnFormer(ClusterBackbone):
    """EnFormer backbone (mmpretrain-style; shared options in :class:`ClusterBackbone`).

    Args:
        arch: ``'s'``, ``'b'``, ``'l'`` (also ``'small'``/``'base'``/``'large'``) or a dict
            with ``embed_dims``, ``depths``, ``num_heads``, ``head_dim``, ``ffn_kernel_sizes``.
        clustering: ``'classification'``, ``'detection'``, ``'segmentation'`` (the published
            agents and centre grids of each task) or a dict with ``agents`` (one entry per
            stage, ``None`` for "all pixels") and ``base_clusterings`` (per stage, a list of
            base-clustering configs such as ``dict(type='FuzzyClustering', grid=6)``).
        ffn_drop_path_rate: stochastic depth of the FFN branches (default: the mixer's
            ``drop_path_rate``); the published model has one schedule per branch.
        layer_scale_init_value: initial layer scale of both branches (published 1e-6).
        ffn_ratio: hidden width of the FFN as a multiple of the channels.
        gap_before_final_norm: ``post_norm{i}(mean_hw(x))`` of shape ``(B, C)``
            (classification) instead of ``post_norm{i}(x)`` maps (dense tasks).
        deploy: build the re-parameterised form (see :meth:`reparameterize`).
        gumbel: sample the partitional assignment with straight-through Gumbel noise in
            training, as published (``False``: argmax in training too).
        clamp_agents: clamp the agent grid of stages 0-1 to the map size, so that small inputs
            (a 64 px image: an 8x8 stage-1 map against 14x14 agents) cluster their pixels
            instead of pooling them *up*; no effect at the published input sizes
            (:class:`~enformer_core.models.clustering.EnsembleClustering`).
    """

    arch_settings: Dict[str, dict] = {
        's': dict(embed_dims=[40, 80, 160, 320], depths=[2, 2, 10, 4], num_heads=[1, 2, 4, 8],
                  head_dim=20, ffn_kernel_sizes=[3, 3, 3, 3]),
        'b': dict(embed_dims=[64, 128, 320, 512], depths=[2, 2, 6, 2], num_heads=[1, 2, 5, 8],
                  head_dim=32, ffn_kernel_sizes=[3, 3, 5, 5]),
        'l': dict(embed_dims=[64, 128, 320, 512], depths=[2, 3, 14, 4], num_heads=[1, 2, 5, 8],
                  head_dim=32, ffn_kernel_sizes=[3, 5, 7, 7]),
    }
    arch_aliases = {'small': 's', 'base': 'b', 'large': 'l'}
    clustering_presets: Dict[str, dict] = {
        'classification': dict(agents=[14, 14, None, None],
                               base_clusterings=[_grids(6, 5), _grids(5, 4), _grids(4, 3),
                                                 _grids(3, 2)]),
        'detection': dict(agents=[40, 40, None, None],
                          base_clusterings=[_grids(12, 10)] * 4),
        'segmentation': dict(agents=[32, 32, None, None],
                             base_clusterings=[_grids(12, 12)] * 4),
    }
    arch_keys = ('embed_dims', 'depths', 'num_heads', 'head_dim', 'ffn_kernel_sizes', 'agents',
                 'base_clusterings')
    per_stage_keys = ('depths', 'num_heads', 'ffn_kernel_sizes', 'agents', 'base_clusterings')
    coordinate_mode = 'enformer'
    channels_last_blocks = True
    published_layout = ENFORMER_LAYOUT

    def __init__(self, arch: Union[str, dict] = 's',
                 clustering: Union[str, dict] = 'classification',
                 ffn_drop_path_rate: Optional[float] = None,
                 layer_scale_init_value: float = 1e-6,
                 ffn_ratio: int = 4,
                 deploy: bool = False,
                 gumbel: bool = True,
                 clamp_agents: bool = False,
                 drop_path_rate: float = 0.0,
                 **kwargs):
        super().__init__(arch, clustering, drop_path_rate=drop_path_rate, options=dict(
            layer_scale_init_value=layer_scale_init_value, ffn_ratio=ffn_ratio, deploy=deploy,
            gumbel=gumbel, clamp_agents=clamp_agents), **kwargs)
        ffn_rate = drop_path_rate if ffn_drop_path_rate is None else ffn_drop_path_rate
        self.ffn_drop_path_rates = drop_path_schedule(ffn_rate, sum(self.arch['depths']))
        self.build()

    # ------------------------------------------------------------------ parts
    def build_stem(self, in_channels: int, out_channels: int) -> nn.Module:
        return Stem(in_channels, out_channels)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x, self.coords)  # (the stem appends the coordinates itself)

    def build_block(self, stage: int, index: int, block_id: int) -> nn.Module:
        a = self.arch
        return EnFormerBlock(a['embed_dims'][stage], a['num_heads'][stage], a['head_dim'],
                             a['base_clusterings'][stage], a['agents'][stage],
                             a['ffn_kernel_sizes'][stage], self.ffn_ratio,
                             self.drop_path_rates[block_id], self.ffn_drop_path_rates[block_id],
                             self.layer_scale_init_value, self.deploy, self.gumbel,
                             self.clamp_agents)

    def build_downsample(self, stage: int) -> nn.Module:
        return Downsample(self.embed_dims[stage], self.embed_dims[stage + 1])

    def build_out_norm(self, stage: int) -> nn.Module:
        dim = self.embed_dims[stage]
        return nn.LayerNorm(dim, eps=1e-6) if self.gap_before_final_norm else LayerNorm2d(dim)

    def stage_output(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        norm = getattr(self, f'post_norm{stage}')
        return norm(x.mean((2, 3))) if self.gap_before_final_norm else norm(x)

    def _default_init(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (BaseClustering, ConsensusAggregation)):
                nn.init.ones_(m.sim_alpha)
                nn.init.zeros_(m.sim_beta)

    @torch.no_grad()
    def reparameterize(self) -> 'EnFormer':
        """Fold the FFN's BatchNorms/branches into one conv and every layer scale into its
        Linear, in place; the eval-mode output is unchanged."""
        for m in list(self.modules()):
            if isinstance(m, ReparamDWConv):
                m.reparameterize()
            elif isinstance(m, LayerScaleLinear):
                m.fuse()
        self.deploy = True
        return self


# the plain-PyTorch classifiers: create_model('enformer_s'), ...
register_variants(EnFormer, {'enformer_s': 's', 'enformer_b': 'b', 'enformer_l': 'l'})
