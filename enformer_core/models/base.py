"""Policies every backbone of the package shares (mmpretrain conventions).

``frozen_stages`` (-1 none, 0 the stem, i >= 1 the stem and stages 0..i-1), ``norm_eval``
(BatchNorms stay in eval mode while training), ``with_cp`` (gradient checkpointing, set on
every stage) and ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)``.
Subclasses provide ``self.stem``, ``self.stages``, ``_default_init()`` and, for their own
checkpoint layout, ``_load_pretrained(checkpoint, prefix)``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from mmengine.model import BaseModule

from .layers import check_image_input


class ClusterBackbone(BaseModule):

    def _set_stage_options(self, out_indices, frozen_stages: int) -> None:
        """Validate and store ``out_indices`` (negative counts from the end) and
        ``frozen_stages`` against ``self.num_stages``."""
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

    def _pretrained_cfg(self) -> Optional[dict]:
        cfg = self.init_cfg
        if isinstance(cfg, (list, tuple)):
            cfg = cfg[0] if len(cfg) == 1 else None
        if cfg is not None and cfg.get('type') == 'Pretrained':
            return cfg
        return None

    def _load_pretrained(self, checkpoint: str, prefix: str) -> None:
        from .checkpoint import load_pretrained
        load_pretrained(self, checkpoint, prefix=prefix)

    def init_weights(self) -> None:
        """Default init, then the ``Pretrained`` checkpoint of ``init_cfg`` if there is one
        (adapted, missing and unexpected keys are logged)."""
        self._default_init()
        cfg = self._pretrained_cfg()
        if cfg is not None:
            self._load_pretrained(cfg['checkpoint'], cfg.get('prefix', ''))
        self._is_init = True

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
    def _stage_output(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """The returned output of stage ``i`` (its post-norm, pooled for classification)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor):
        check_image_input(x, self.in_channels, self.min_input_size, type(self).__name__)
        x = self.stem(self.coords(x))
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage.forward_blocks(x)
            if i in self.out_indices:
                # standard (NCHW-contiguous) outputs: the channels-first LayerNorms leave
                # channels-last strides, which convolutions keep, and mmcv's RoIAlign reads
                # its input as contiguous NCHW memory without checking: on channels-last
                # FPN maps it pools garbage and Mask R-CNN's RoI heads cannot learn.
                outs.append(self._stage_output(i, x).contiguous())
            if stage.downsample is not None:
                x = stage.downsample(x)
        return tuple(outs)
