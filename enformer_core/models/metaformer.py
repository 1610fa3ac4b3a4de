"""The pre-norm MetaFormer skeleton shared by the clustering baselines.

Context Clusters (CoC), FEC and ClusterFormer differ only in their token mixer and (FEC) in the
reducer between stages; everything else lives here once (``shared/spec/BASELINES.md``)::

    image (3) + centred coordinates (2) -> Conv4x4 s4 -> [stage i: blocks -> reducer] x 4
    block:  x + DropPath(ls1 * Mixer(GN(x)))  ->  x + DropPath(ls2 * MLP(GN(x)))
    MLP:    Linear(C, rC) -> GELU -> Linear(rC, C), channels-last
    output: GN_i(x) per requested stage; classification returns mean_hw(GN_3(x)) (B, C)

A subclass provides ``arch_settings`` and two hooks, :meth:`MetaFormerBackbone.build_mixer`
and :meth:`MetaFormerBackbone.build_downsample`.  Blocks work on channels-first maps.
"""
from __future__ import annotations

import copy
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp

from .base import ClusterBackbone
from .layers import CoordinateGrid, DropPath


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


class MetaFormerStage(nn.Module):
    def __init__(self, blocks, downsample: Optional[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample
        self.with_cp = False

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.with_cp and self.training and x.requires_grad:
                x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class MetaFormerBackbone(ClusterBackbone):
    """Base class of the CoC / FEC / ClusterFormer backbones (mmpretrain-style).

    Args:
        arch: a name of ``arch_settings`` (or an alias) or a dict with at least
            ``embed_dims``, ``depths`` and ``mlp_ratios`` plus the subclass's keys.
        in_channels: image channels (the two coordinate channels are appended inside).
        out_indices: stages whose outputs are returned (negative counts from the end).
        frozen_stages: ``-1`` freezes nothing, ``0`` the stem, ``i >= 1`` the stem and
            stages ``0 .. i-1`` with their reducers.
        norm_eval: put BatchNorm layers in eval mode while training.  The baselines only
            use GroupNorm (no running statistics), so this is accepted for config
            compatibility with the toolboxes and has nothing to freeze.
        with_cp: gradient checkpointing of every block.
        drop_path_rate: stochastic depth, ``linspace(0, rate, total_blocks)``.
        layer_scale_init_value: initial per-channel layer scale (published 1e-5).
        pooled_output: ``True`` returns ``mean_hw(GN_i(x))`` of shape ``(B, C_i)`` per
            requested stage (classification: ``ImageClassifier(neck=None)`` works);
            ``False`` returns the ``GN_i(x)`` maps (dense tasks).
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH, prefix='backbone.')`` loads
            our layout or the published one (converted on the fly) and logs unmatched keys.
    """

    arch_settings: Dict[str, dict] = {}
    arch_aliases: Dict[str, str] = {}
    #: keys a custom arch dict must have (subclasses extend)
    arch_keys = ('embed_dims', 'depths', 'mlp_ratios')
    #: stride 32 needs at least one pixel in the last stage
    min_input_size = 32

    def __init__(self, arch: Union[str, dict],
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (3,),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 drop_path_rate: float = 0.0,
                 layer_scale_init_value: float = 1e-5,
                 pooled_output: bool = True,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        self.arch = arch if isinstance(arch, dict) and arch.get('_resolved') else \
            self.resolve_arch(arch)
        dims = list(self.arch['embed_dims'])
        depths = list(self.arch['depths'])
        self.embed_dims = dims
        self.num_stages = len(dims)
        self.in_channels = in_channels
        self._set_stage_options(out_indices, frozen_stages)
        self.norm_eval = norm_eval
        self.pooled_output = pooled_output

        self.coords = CoordinateGrid('centered')
        self.stem = nn.Conv2d(in_channels + 2, dims[0], kernel_size=4, stride=4)
        total = sum(depths)  # linear over all blocks, rate * k / (L - 1); plain floats so
        dpr = [drop_path_rate * k / max(total - 1, 1) for k in range(total)]  # meta init works
        self.stages = nn.ModuleList()
        k = 0
        for i in range(self.num_stages):
            blocks = [MetaFormerBlock(dims[i], self.build_mixer(i, j), self.arch['mlp_ratios'][i],
                                      dpr[k + j], layer_scale_init_value)
                      for j in range(depths[i])]
            k += depths[i]
            down = self.build_downsample(i) if i < self.num_stages - 1 else None
            self.stages.append(MetaFormerStage(blocks, down))
        for i in self.out_indices:
            self.add_module(f'post_norm{i}', nn.GroupNorm(1, dims[i]))
        self.with_cp = with_cp
        self._default_init()
        self._freeze_stages()

    # ------------------------------------------------------------------ subclass hooks
    def build_mixer(self, stage: int, index: int) -> nn.Module:  # pragma: no cover
        raise NotImplementedError

    def build_downsample(self, stage: int) -> nn.Module:
        """Reducer after ``stage``; default: the skeleton's Conv3x3 s2 p1."""
        return ConvDownsample(self.embed_dims[stage], self.embed_dims[stage + 1])

    # ------------------------------------------------------------------ configuration
    @classmethod
    def resolve_arch(cls, arch: Union[str, dict]) -> dict:
        name = cls.__name__
        if isinstance(arch, str):
            key = cls.arch_aliases.get(arch.lower(), arch.lower())
            if key not in cls.arch_settings:
                raise ValueError(f'unknown {name} arch {arch!r}; choose one of '
                                 f'{sorted(cls.arch_settings)} or pass a dict')
            out = copy.deepcopy(cls.arch_settings[key])
        elif isinstance(arch, dict):
            missing = set(cls.arch_keys) - set(arch)
            if missing:
                raise ValueError(f'custom {name} arch dict is missing {sorted(missing)}')
            out = copy.deepcopy(arch)
        else:
            raise ValueError(f'{name} arch must be a str or dict, got {type(arch).__name__}')
        n = len(out['embed_dims'])
        for key, value in out.items():
            if isinstance(value, (list, tuple)) and len(value) != n and key != 'embed_dims':
                raise ValueError(f'{name} arch[{key!r}] has {len(value)} entries, '
                                 f'embed_dims has {n}')
        out['_resolved'] = True
        return out

    # ------------------------------------------------------------------ init / weights
    def _default_init(self) -> None:
        """Linear: trunc_normal(0.02), bias 0; convs keep PyTorch's default; alpha 1, beta 0."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _load_pretrained(self, checkpoint: str, prefix: str) -> None:
        from .baseline_converters import load_baseline_pretrained
        load_baseline_pretrained(self, checkpoint, prefix=prefix)

    # ------------------------------------------------------------------ forward
    def _stage_output(self, i: int, x: torch.Tensor) -> torch.Tensor:
        y = getattr(self, f'post_norm{i}')(x)
        return y.mean((2, 3)) if self.pooled_output else y
