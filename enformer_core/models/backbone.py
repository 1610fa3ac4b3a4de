"""The skeleton every backbone of the package shares (mmpretrain conventions)::

    image (C) + 2 coordinate channels -> stem -> [stage i: blocks -> downsample (i < last)]
    outputs: post_norm{i}(stage i) for i in out_indices, pooled to (B, C_i) when
             gap_before_final_norm (classification), maps (B, C_i, H_i, W_i) otherwise

A family (EnFormer, Context Clusters, FEC, ClusterFormer) is a subclass that supplies the parts:

* tables: ``arch_settings`` (variants), ``arch_aliases``, ``clustering_presets`` (per-task
  clustering settings), ``arch_keys`` (what a resolved arch must hold), ``per_stage_keys``
  (entries expanded to one per stage);
* builders: ``build_stem``, ``build_block``, ``build_downsample``, ``build_out_norm``,
  ``stage_output`` (how a stage's map becomes an output) and ``_default_init``;
* ``published_layout``: the key layout of the family's official checkpoints
  (:class:`~enformer_core.checkpoint.PublishedLayout`), converted when they are loaded.

A subclass's ``__init__`` calls ``super().__init__`` with its own ``options`` (resolution and the
shared options: ``out_indices``, ``frozen_stages``, ``norm_eval``, ``with_cp``,
``drop_path_rate``, ``gap_before_final_norm``, ``init_cfg``), then ``self.build()``.
"""
from __future__ import annotations

import copy
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp

from ..checkpoint import PublishedLayout, load_checkpoint
from .layers import CoordinateGrid, as_list, check_image_input

try:
    from mmengine.model import BaseModule
except ImportError:  # backbone-only install: the part of BaseModule the backbones use
    class BaseModule(nn.Module):
        def __init__(self, init_cfg=None):
            super().__init__()
            self.init_cfg = copy.deepcopy(init_cfg)
            self._is_init = False

        @property
        def is_init(self) -> bool:
            return self._is_init

_POST_NORM = re.compile(r'(^|\.)post_norm\d+\.')


class ClusterStage(nn.Module):
    """The blocks of one stage and the downsampling after it.

    ``channels_last``: the blocks work on ``(B, H, W, C)`` tensors (EnFormer: its linears and
    LayerNorms are channels-last); the stage takes and returns ``(B, C, H, W)`` either way.
    """

    def __init__(self, blocks: Sequence[nn.Module], downsample: Optional[nn.Module],
                 channels_last: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample
        self.channels_last = channels_last
        self.with_cp = False

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            if self.with_cp and self.training and x.requires_grad:
                x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x.permute(0, 3, 1, 2) if self.channels_last else x


class ClusterBackbone(BaseModule):
    """Base class of every backbone (see the module docstring for what a family supplies).

    Args:
        arch: a name of ``arch_settings`` (or an alias, or ``'<family>-<name>'``) or a dict
            with every key of ``arch_keys``.
        clustering: a name of ``clustering_presets`` (``'classification'``, ``'detection'``,
            ``'segmentation'``) or a dict of the preset's keys; merged into the arch.
        in_channels: image channels (the two coordinate channels are appended inside).
        out_indices: stages whose outputs are returned (negative counts from the end).
        frozen_stages: ``-1`` freezes nothing, ``0`` the stem, ``i >= 1`` the stem and stages
            ``0 .. i-1`` with their downsampling.
        norm_eval: keep BatchNorm layers in eval mode while training.
        with_cp: gradient checkpointing of every block.
        drop_path_rate: stochastic depth, ``rate * k / (L - 1)`` for block ``k`` of ``L``.
        gap_before_final_norm: return pooled ``(B, C)`` vectors per requested stage
            (classification: ``ImageClassifier(neck=None)`` works) instead of maps.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH_OR_URL, prefix='backbone.')``
            loads our layout or the family's published one.  A checkpoint that does not fit is
            an error (the report names the keys) unless ``strict=False`` is given in it.
        overrides: per-variant entries replaced by the subclass's own arguments.
        options: the subclass's own options, stored as attributes before anything is built.
    """

    arch_settings: Dict[str, dict] = {}
    arch_aliases: Dict[str, str] = {}
    arch_keys: Tuple[str, ...] = ('embed_dims', 'depths')
    clustering_presets: Dict[str, dict] = {}
    per_stage_keys: Tuple[str, ...] = ('depths',)
    coordinate_mode = 'enformer'
    channels_last_blocks = False
    published_layout: Optional[PublishedLayout] = None
    #: stride 32 needs at least one pixel in the last stage
    min_input_size = 32

    def __init__(self, arch: Union[str, dict], clustering: Union[str, dict, None] = None,
                 in_channels: int = 3, out_indices: Sequence[int] = (3,),
                 frozen_stages: int = -1, norm_eval: bool = False, with_cp: bool = False,
                 drop_path_rate: float = 0.0, gap_before_final_norm: bool = True,
                 init_cfg: Optional[dict] = None, overrides: Optional[dict] = None,
                 options: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        for name, value in (options or {}).items():  # the family's own options, for its builders
            setattr(self, name, value)
        self.arch = self.resolve_arch(arch, clustering, overrides)
        self.embed_dims = list(self.arch['embed_dims'])
        self.num_stages = len(self.embed_dims)
        self.in_channels = in_channels
        self.norm_eval = norm_eval
        self.gap_before_final_norm = gap_before_final_norm
        self._set_stage_options(out_indices, frozen_stages)
        total = sum(self.arch['depths'])
        self.drop_path_rates = drop_path_schedule(drop_path_rate, total)
        self._with_cp = with_cp

    @property
    def feature_info(self) -> List[dict]:
        """timm's ``feature_info``: one ``dict(num_chs, reduction, module)`` per returned stage
        (strides 4/8/16/32; ``module``: the output norm the map comes out of)."""
        return [dict(num_chs=self.embed_dims[i], reduction=4 * 2 ** i, module=f'post_norm{i}')
                for i in sorted(set(self.out_indices))]

    @property
    def clustering_cfg(self) -> dict:
        """The clustering entries of the resolved arch (those the presets set)."""
        keys = {k for preset in self.clustering_presets.values() for k in preset}
        return {k: v for k, v in self.arch.items() if k in keys}

    # ------------------------------------------------------------------ building
    def build(self) -> None:
        """Stem, stages and output norms from the builders; then init and freezing."""
        self.coords = CoordinateGrid(self.coordinate_mode)
        self.stem = self.build_stem(self.in_channels + 2, self.embed_dims[0])
        self.stages = nn.ModuleList()
        k = 0
        for i, depth in enumerate(self.arch['depths']):
            blocks = [self.build_block(i, j, k + j) for j in range(depth)]
            k += depth
            down = self.build_downsample(i) if i < self.num_stages - 1 else None
            self.stages.append(ClusterStage(blocks, down, self.channels_last_blocks))
        for i in self.out_indices:
            self.add_module(f'post_norm{i}', self.build_out_norm(i))
        self.with_cp = self._with_cp
        self._default_init()
        self._freeze_stages()

    def build_stem(self, in_channels: int, out_channels: int) -> nn.Module:
        raise NotImplementedError

    def build_block(self, stage: int, index: int, block_id: int) -> nn.Module:
        """Block ``index`` of ``stage``; ``block_id`` counts blocks over all stages."""
        raise NotImplementedError

    def build_downsample(self, stage: int) -> nn.Module:
        raise NotImplementedError

    def build_out_norm(self, stage: int) -> nn.Module:
        raise NotImplementedError

    def stage_output(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        """The returned output of ``stage`` (its post-norm, pooled for classification)."""
        raise NotImplementedError

    def _default_init(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ configuration
    @classmethod
    def resolve_arch(cls, arch, clustering=None, overrides=None) -> dict:
        """Variant + clustering preset + overrides, validated, per-stage entries expanded."""
        name = cls.__name__
        if isinstance(arch, str):
            key = arch.lower()
            for prefix in (name.lower() + '-', name.lower() + '_'):
                key = key[len(prefix):] if key.startswith(prefix) else key
            key = cls.arch_aliases.get(key, key)
            if key not in cls.arch_settings:
                raise ValueError(f'unknown {name} arch {arch!r}; choose one of '
                                 f'{sorted(cls.arch_settings)} or pass a dict')
            out = copy.deepcopy(cls.arch_settings[key])
        elif isinstance(arch, dict):
            out = copy.deepcopy(dict(arch))
        else:
            raise ValueError(f'{name} arch must be a str or dict, got {type(arch).__name__}')
        if isinstance(clustering, str):
            if clustering not in cls.clustering_presets:
                raise ValueError(f'unknown {name} clustering preset {clustering!r}; choose one '
                                 f'of {sorted(cls.clustering_presets)} or pass a dict')
            out.update(copy.deepcopy(cls.clustering_presets[clustering]))
        elif isinstance(clustering, dict):
            out.update(copy.deepcopy(clustering))
        elif clustering is not None:
            raise ValueError(f'{name} clustering must be a preset name or a dict, got '
                             f'{type(clustering).__name__}')
        out.update({k: v for k, v in (overrides or {}).items() if v is not None})
        missing = [k for k in cls.arch_keys if k not in out]
        if missing:
            raise ValueError(f'{name} arch is missing {missing} (custom arch dicts need '
                             f'{list(cls.arch_keys)})')
        n = len(out['embed_dims'])
        for key in cls.per_stage_keys:
            if key in out:
                out[key] = as_list(out[key], n, key)
        return out

    def _set_stage_options(self, out_indices, frozen_stages: int) -> None:
        n = self.num_stages
        if isinstance(out_indices, int):
            out_indices = (out_indices,)
        out_indices = [i + n if i < 0 else i for i in out_indices]
        for i in out_indices:
            if not 0 <= i < n:
                raise ValueError(f'out_indices must be in [0, {n - 1}] (or negative from the '
                                 f'end), got {out_indices}')
        self.out_indices = tuple(out_indices)
        if not -1 <= frozen_stages <= n:
            raise ValueError(f'frozen_stages must be in [-1, {n}], got {frozen_stages}')
        self.frozen_stages = frozen_stages

    # ------------------------------------------------------------------ weights
    def filter_checkpoint(self, state: dict) -> Tuple[dict, Optional[str], List[str]]:
        """Prepare a state dict for this backbone: ``(state, converted_from, keep_init)``.

        Converts the family's published layout to ours.  A classifier's checkpoint loaded
        into a dense backbone brings no output norms: its pre-head norm is not a stage norm,
        and the published code leaves every dense ``post_norm`` at its initial values, so
        they are dropped and reported as kept at init (``docs/checkpoints.md``).
        """
        layout = self.published_layout
        converted_from = None
        if layout is not None and layout.matches(state):
            state, _ = layout.to_ours(state)
            converted_from = f'published {layout.name}'
        keep_init: List[str] = []
        if not self.gap_before_final_norm and _is_classifier_state(state):
            state = {k: v for k, v in state.items() if not _POST_NORM.search(k)}
            keep_init = [r'(^|\.)post_norm\d+\.']
        return state, converted_from, keep_init

    def init_weights(self) -> None:
        """Default init, then the ``Pretrained`` checkpoint of ``init_cfg`` if there is one."""
        self._default_init()
        cfg = self.init_cfg
        if isinstance(cfg, (list, tuple)):
            cfg = cfg[0] if len(cfg) == 1 else None
        if cfg is not None and cfg.get('type') == 'Pretrained':
            load_checkpoint(self, cfg['checkpoint'], prefix=cfg.get('prefix', ''),
                            strict=cfg.get('strict', True))
        self._is_init = True

    # ------------------------------------------------------------------ training modes
    @property
    def with_cp(self) -> bool:
        return self._with_cp

    @with_cp.setter
    def with_cp(self, value: bool) -> None:
        self._with_cp = bool(value)
        for stage in self.stages:
            stage.with_cp = self._with_cp

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        for m in [self.stem] + [self.stages[i] for i in range(self.frozen_stages)]:
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # ------------------------------------------------------------------ forward
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The stem on the image with its two coordinate channels appended."""
        return self.stem(self.coords(x, channels_last=self.channels_last_blocks))

    def forward_stages(self, x: torch.Tensor,
                       indices: Optional[Sequence[int]] = None) -> List[torch.Tensor]:
        """The raw ``(B, C_i, H_i, W_i)`` maps of stages ``indices`` (default
        ``out_indices``) in stage order, before their output norms; stops after the last
        one wanted."""
        check_image_input(x, self.in_channels, self.min_input_size, type(self).__name__)
        wanted = set(self.out_indices if indices is None else indices)
        if not wanted:
            return []
        # channels-last blocks: the whole backbone runs in channels-last memory, so the
        # (B, C, H, W) <-> (B, H, W, C) permutes around blocks and LayerNorm2d are views
        x = self.embed(x)
        maps = []
        for i, stage in enumerate(self.stages):
            x = stage.forward_blocks(x)
            if i in wanted:
                maps.append(x)
            if i >= max(wanted):
                break
            x = stage.downsample(x)
        return maps

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        # standard NCHW-contiguous outputs: mmcv's RoIAlign reads its input as contiguous NCHW
        # memory without checking strides, and on channels-last maps pools garbage
        return tuple(self.stage_output(i, m).contiguous()
                     for i, m in zip(sorted(set(self.out_indices)), self.forward_stages(x)))


def drop_path_schedule(rate: float, n: int) -> List[float]:
    """``rate * k / (n - 1)`` for ``k = 0 .. n-1`` (a linear ramp from 0 to ``rate``)."""
    return [rate * k / max(n - 1, 1) for k in range(n)]


def _is_classifier_state(state: dict) -> bool:
    """A classifier's checkpoint: a head, or only the last stage's (pre-head) output norm."""
    if any(k.startswith('head.') for k in state):
        return True
    norms = {m.group(1) for k in state for m in [re.search(r'post_norm(\d+)\.', k)] if m}
    return norms == {'3'}
