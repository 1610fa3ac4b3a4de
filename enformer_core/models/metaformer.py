"""The pre-norm MetaFormer skeleton shared by the clustering baselines.

Context Clusters (CoC), FEC and ClusterFormer differ only in their token mixer and (FEC) in the
reducer between stages; everything else lives here once (``docs/baselines.md``)::

    image (3) + centred coordinates (2) -> Conv4x4 s4 -> [stage i: blocks -> reducer] x 4
    block:  x + DropPath(ls1 * Mixer(GN(x)))  ->  x + DropPath(ls2 * MLP(GN(x)))
    MLP:    Linear(C, rC) -> GELU -> Linear(rC, C), channels-last
    output: GN_i(x) per requested stage; classification returns mean_hw(GN_3(x)) (B, C)

A family provides ``arch_settings`` and :meth:`MetaFormerBackbone.build_mixer` (FEC also
``build_downsample``).  Blocks work on channels-first maps.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn as nn

from .backbone import ClusterBackbone
from .layers import DropPath


class Mlp(nn.Module):
    """``Linear(C, hidden) -> GELU -> Linear(hidden, out)`` on channels-last tensors."""

    def __init__(self, dim: int, hidden: int, out_dim: Optional[int] = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MetaFormerBlock(nn.Module):
    """Pre-norm block with GroupNorm(1), per-channel layer scale and drop path (B, C, H, W)."""

    def __init__(self, dim: int, mixer: nn.Module, mlp_ratio: float, drop_path: float = 0.0,
                 layer_scale_init_value: float = 1e-5):
        super().__init__()
        self.norm1 = nn.GroupNorm(1, dim)
        self.mixer = mixer
        self.norm2 = nn.GroupNorm(1, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.layer_scale_1 = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
        self.layer_scale_2 = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale_1.view(1, -1, 1, 1) * self.mixer(self.norm1(x)))
        y = self.mlp(self.norm2(x).permute(0, 2, 3, 1)) * self.layer_scale_2
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class ConvDownsample(nn.Conv2d):
    """The skeleton's reducer: a plain strided conv, no norm (CoC: 3x3 s2 p1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 2):
        super().__init__(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2)


class MetaFormerBackbone(ClusterBackbone):
    """Base class of the CoC / FEC / ClusterFormer backbones (shared options in
    :class:`~enformer_core.models.backbone.ClusterBackbone`).

    A family adds its ``arch_settings`` and its mixer (``build_mixer``), and FEC its reducer
    (``build_downsample``).  ``layer_scale_init_value`` is the published 1e-5.  ``norm_eval``
    is accepted for the toolboxes' configs; the baselines have only GroupNorms, so there is
    nothing for it to freeze.  With ``gap_before_final_norm`` the output is
    ``mean_hw(GN_i(x))`` (the published classifier normalises, then pools).
    """

    arch_keys = ('embed_dims', 'depths', 'mlp_ratios', 'num_heads', 'head_dim')
    per_stage_keys = ('depths', 'mlp_ratios', 'num_heads')
    coordinate_mode = 'centered'

    def __init__(self, arch: Union[str, dict], clustering=None,
                 layer_scale_init_value: float = 1e-5, **kwargs):
        options = dict(kwargs.pop('options', {}), layer_scale_init_value=layer_scale_init_value)
        super().__init__(arch, clustering, options=options, **kwargs)

    def build_mixer(self, stage: int, index: int) -> nn.Module:  # pragma: no cover
        raise NotImplementedError

    # ------------------------------------------------------------------ parts
    def build_stem(self, in_channels: int, out_channels: int) -> nn.Module:
        return nn.Conv2d(in_channels, out_channels, kernel_size=4, stride=4)

    def build_block(self, stage: int, index: int, block_id: int) -> nn.Module:
        return MetaFormerBlock(self.embed_dims[stage], self.build_mixer(stage, index),
                               self.arch['mlp_ratios'][stage], self.drop_path_rates[block_id],
                               self.layer_scale_init_value)

    def build_downsample(self, stage: int) -> nn.Module:
        """The skeleton's reducer: Conv3x3 s2 p1."""
        return ConvDownsample(self.embed_dims[stage], self.embed_dims[stage + 1])

    def build_out_norm(self, stage: int) -> nn.Module:
        return nn.GroupNorm(1, self.embed_dims[stage])

    def stage_output(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        y = getattr(self, f'post_norm{stage}')(x)
        return y.mean((2, 3)) if self.gap_before_final_norm else y

    def _default_init(self) -> None:
        """Linear: trunc_normal(0.02), bias 0; convs keep PyTorch's default; alpha 1, beta 0."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
