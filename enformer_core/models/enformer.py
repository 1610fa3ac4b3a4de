"""EnFormer: a vision backbone whose token mixer is ensemble clustering.

Specification: ``shared/spec/ARCHITECTURE.md``.  Layout (strides 4/8/16/32)::

    image (3) + coordinates (2) -> Stem (s4) -> [Stage i: blocks -> downsample (i < 3)] x 4
    Block:  x + DropPath(EnsembleClustering(LN(x)))  ->  x + DropPath(FFN(LN(x)))
    FFN:    ReparamDWConv(k) -> Linear(C, 4C) -> SiLU -> Linear(4C, C) * gamma

Variants are rows of ``EnFormer.arch_settings``; the clustering settings of each task
(agents, centre grids) are rows of ``EnFormer.clustering_presets``.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp

from .base import ClusterBackbone
from .clustering import BaseClustering, ConsensusAggregation, EnsembleClustering
from .layers import (CoordinateGrid, DropPath, LayerNorm2d, LayerScaleLinear, ReparamDWConv,
                     as_list, linspace_list)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
        self.act = nn.SiLU()
        self.fc2 = LayerScaleLinear(ratio * dim, dim, layer_scale_init_value, deploy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.fc2(self.act(self.fc1(x)))


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
        x = x + self.drop_path_mixer(self.mixer(self.norm1(x)))
        return x + self.drop_path_ffn(self.ffn(self.norm2(x)))


class EnFormerStage(nn.Module):
    def __init__(self, blocks: List[EnFormerBlock], downsample: Optional[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample
        self.with_cp = False

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Run the blocks on a channels-first map and return a channels-first map."""
        x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            if self.with_cp and self.training and x.requires_grad:
                x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x.permute(0, 3, 1, 2)


def _grids(fuzzy, partitional) -> List[dict]:
    return [dict(type='FuzzyClustering', grid=fuzzy),
            dict(type='PartitionalClustering', grid=partitional)]


class EnFormer(ClusterBackbone):
    """EnFormer backbone (mmpretrain-style).

    Args:
        arch: ``'s'``, ``'b'``, ``'l'`` (also ``'small'``/``'base'``/``'large'``) or a dict
            with ``embed_dims``, ``depths``, ``num_heads``, ``head_dim``, ``ffn_kernel_sizes``.
        clustering: ``'classification'``, ``'detection'``, ``'segmentation'`` (the published
            agents and centre grids of each task) or a dict with ``agents`` (one entry per
            stage, ``None`` for "all pixels") and ``base_clusterings`` (per stage, a list of
            base-clustering configs).
        in_channels: image channels (coordinates are appended inside).
        out_indices: stages whose outputs are returned.
        frozen_stages: ``-1`` freezes nothing, ``0`` the stem, ``i >= 1`` the stem and
            stages ``0 .. i-1`` (with their downsampling convs).
        norm_eval: keep the BatchNorm layers (in the FFN) in eval mode while training.
        with_cp: gradient checkpointing of every block.
        drop_path_rate / ffn_drop_path_rate: stochastic depth of the mixer / FFN branches,
            each ``linspace(0, rate, total_blocks)``; the FFN rate defaults to the mixer's.
        gap_before_final_norm: return ``post_norm{i}(mean_hw(x))`` of shape ``(B, C)``
            (classification) instead of ``post_norm{i}(x)`` maps (dense tasks).
        deploy: build the re-parameterised form (see :meth:`reparameterize`).
        gumbel: sample the partitional assignment with straight-through Gumbel noise
            during training, as published.
        clamp_agents: clamp the agent grid of stages 0-1 to the map size, so that small
            inputs (e.g. 64 px: an 8x8 stage-1 map against 14x14 agents) cluster their
            pixels instead of pooling them *up*; no effect when the maps are larger than the
            grids (every task at its published input size).  See
            :class:`~enformer_core.models.clustering.EnsembleClustering`.
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

    #: smallest input side: stride 32 needs at least one pixel in the last stage
    min_input_size = 32

    def __init__(self, arch: Union[str, dict] = 's',
                 clustering: Union[str, dict] = 'classification',
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (3,),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 drop_path_rate: float = 0.0,
                 ffn_drop_path_rate: Optional[float] = None,
                 layer_scale_init_value: float = 1e-6,
                 ffn_ratio: int = 4,
                 gap_before_final_norm: bool = True,
                 deploy: bool = False,
                 gumbel: bool = True,
                 clamp_agents: bool = False,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        self.arch = self._resolve_arch(arch)
        self.clustering_cfg = self._resolve_clustering(clustering)
        dims = self.arch['embed_dims']
        depths = self.arch['depths']
        self.embed_dims = list(dims)
        self.num_stages = len(dims)
        self.in_channels = in_channels
        self._set_stage_options(out_indices, frozen_stages)
        self.norm_eval = norm_eval
        self.gap_before_final_norm = gap_before_final_norm
        self.deploy = deploy

        self.coords = CoordinateGrid('enformer')
        self.stem = Stem(in_channels + 2, dims[0])
        total = sum(depths)
        dpr = linspace_list(drop_path_rate, total)
        ffn_rate = drop_path_rate if ffn_drop_path_rate is None else ffn_drop_path_rate
        ffn_dpr = linspace_list(ffn_rate, total)
        agents = as_list(self.clustering_cfg['agents'], self.num_stages, 'agents')
        base = self.clustering_cfg['base_clusterings']
        if len(base) != self.num_stages:
            raise ValueError(f'base_clusterings needs one list per stage ({self.num_stages}), '
                             f'got {len(base)}')
        self.stages = nn.ModuleList()
        k = 0
        for i in range(self.num_stages):
            blocks = [EnFormerBlock(dims[i], self.arch['num_heads'][i], self.arch['head_dim'],
                                    base[i], agents[i], self.arch['ffn_kernel_sizes'][i],
                                    ffn_ratio, dpr[k + j], ffn_dpr[k + j],
                                    layer_scale_init_value, deploy, gumbel, clamp_agents)
                      for j in range(depths[i])]
            k += depths[i]
            down = Downsample(dims[i], dims[i + 1]) if i < self.num_stages - 1 else None
            self.stages.append(EnFormerStage(blocks, down))
        for i in self.out_indices:
            norm = nn.LayerNorm(dims[i], eps=1e-6) if gap_before_final_norm else \
                LayerNorm2d(dims[i])
            self.add_module(f'post_norm{i}', norm)
        self.with_cp = with_cp
        self._default_init()
        self._freeze_stages()

    # ------------------------------------------------------------------ configuration
    @classmethod
    def _resolve_arch(cls, arch) -> dict:
        if isinstance(arch, str):
            key = arch.lower().replace('enformer-', '').replace('enformer_', '')
            key = cls.arch_aliases.get(key, key)
            if key not in cls.arch_settings:
                raise ValueError(f'unknown EnFormer arch {arch!r}; choose one of '
                                 f'{sorted(cls.arch_settings)} or pass a dict')
            return copy.deepcopy(cls.arch_settings[key])
        if isinstance(arch, dict):
            need = {'embed_dims', 'depths', 'num_heads', 'head_dim', 'ffn_kernel_sizes'}
            missing = need - set(arch)
            if missing:
                raise ValueError(f'custom arch dict is missing {sorted(missing)}')
            n = len(arch['embed_dims'])
            for key in ('depths', 'num_heads', 'ffn_kernel_sizes'):
                if len(arch[key]) != n:
                    raise ValueError(f'arch[{key!r}] has {len(arch[key])} entries, '
                                     f'embed_dims has {n}')
            return copy.deepcopy(arch)
        raise ValueError(f'arch must be a str or dict, got {type(arch).__name__}')

    @classmethod
    def _resolve_clustering(cls, clustering) -> dict:
        if isinstance(clustering, str):
            if clustering not in cls.clustering_presets:
                raise ValueError(f'unknown clustering preset {clustering!r}; choose one of '
                                 f'{sorted(cls.clustering_presets)} or pass a dict')
            return copy.deepcopy(cls.clustering_presets[clustering])
        if isinstance(clustering, dict) and {'agents', 'base_clusterings'} <= set(clustering):
            return copy.deepcopy(clustering)
        raise ValueError('clustering must be a preset name or a dict with "agents" and '
                         '"base_clusterings"')

    # ------------------------------------------------------------------ init / weights
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

    # ------------------------------------------------------------------ forward
    def _stage_output(self, i: int, x: torch.Tensor) -> torch.Tensor:
        norm = getattr(self, f'post_norm{i}')
        return norm(x.mean((2, 3))) if self.gap_before_final_norm else norm(x)


# --------------------------------------------------------------------------------------
# plain-PyTorch entry points
# --------------------------------------------------------------------------------------
from .factory import ClusterClassifier, register_model  # noqa: E402


def _enformer_classifier(arch: str, num_classes: int = 1000, **kwargs) -> ClusterClassifier:
    kwargs.setdefault('drop_path_rate', 0.0)
    backbone = EnFormer(arch=arch, clustering='classification', out_indices=(3,),
                        gap_before_final_norm=True, **kwargs)
    return ClusterClassifier(backbone, backbone.embed_dims[-1], num_classes)


@register_model
def enformer_s(**kwargs) -> ClusterClassifier:
    return _enformer_classifier('s', **kwargs)


@register_model
def enformer_b(**kwargs) -> ClusterClassifier:
    return _enformer_classifier('b', **kwargs)


@register_model
def enformer_l(**kwargs) -> ClusterClassifier:
    return _enformer_classifier('l', **kwargs)
