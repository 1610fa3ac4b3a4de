"""Build a model from a config of any task, or from a ``create_model`` name, for the tools.

A config is built through its own toolbox's registry (``default_scope``); a
``Pretrained`` ``init_cfg`` is skipped because the tools load weights themselves.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch.nn as nn

from ..checkpoint import load_checkpoint
from ..models import create_model

#: default input size (H, W) of each task: classification 224², detection 1280x800
#: (W x H, mmdet's test scale), segmentation 512²
TASK_SHAPES: Dict[str, Tuple[int, int]] = {'classification': (224, 224),
                                           'detection': (800, 1280),
                                           'segmentation': (512, 512)}
SCOPE_TASKS = {'mmpretrain': 'classification', 'mmcls': 'classification',
               'mmdet': 'detection', 'mmseg': 'segmentation'}
#: ImageNet statistics on the 0-255 scale (OpenMMLab's data preprocessors)
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass
class LoadedModel:
    """A model with what the tools need to know about it."""
    model: nn.Module
    name: str
    task: str = 'classification'
    config: Any = None
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    notes: List[str] = field(default_factory=list)

    @property
    def backbone(self) -> nn.Module:
        return getattr(self.model, 'backbone', self.model)

    @property
    def in_channels(self) -> int:
        return int(getattr(self.backbone, 'in_channels', 3))

    @property
    def default_shape(self) -> Tuple[int, int]:
        return TASK_SHAPES.get(self.task, (224, 224))


def is_config_path(spec: str) -> bool:
    return spec.endswith('.py') or os.sep in spec or os.path.isfile(spec)


def load_model(spec: str, checkpoint: Optional[str] = None, deploy: bool = False,
               device: str = 'cpu', num_classes: Optional[int] = None,
               strict: bool = True) -> LoadedModel:
    """Build ``spec`` (an OpenMMLab config file of any task or a ``create_model`` name).

    A config is built through its own scope's registry (``default_scope``); configs import
    ``enformer_core`` through ``custom_imports``.  ``checkpoint`` (a path or URL, or
    ``None``/``'none'`` for random init) goes through
    :func:`~enformer_core.checkpoint.load_checkpoint` (weights-only, published layouts
    converted; a checkpoint that does not fit is an error unless ``strict=False``).
    ``deploy`` calls ``reparameterize()``.  Returns the model in eval mode.
    """
    if is_config_path(spec):
        lm = _load_from_config(spec)
    else:
        try:
            kw = {} if num_classes is None else dict(num_classes=num_classes)
            model = create_model(spec, **kw)
        except ValueError as e:
            raise ValueError(f'{spec!r} is neither a config file nor a model name: {e}') from None
        lm = LoadedModel(model=model, name=spec)
    if checkpoint and str(checkpoint).lower() != 'none':
        lm.notes.append(str(load_checkpoint(lm.model, checkpoint, strict=strict, log=False)))
    if deploy:
        reparameterize(lm.model)
    lm.model.to(device).eval()
    return lm


def _load_from_config(path: str) -> LoadedModel:
    if not os.path.isfile(path):
        raise FileNotFoundError(f'config file {path!r} does not exist')
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    cfg = Config.fromfile(path)  # also runs custom_imports (enformer_core registers itself)
    if 'model' not in cfg:
        raise ValueError(f'config {path} has no "model" entry')
    scope = cfg.get('default_scope', None)
    if scope:
        try:
            init_default_scope(scope)
        except Exception as e:  # missing toolbox
            raise RuntimeError(f'config {path} needs the {scope!r} toolbox: {e}') from e
    task = SCOPE_TASKS.get(scope, 'classification')
    model_cfg = copy.deepcopy(cfg.model)
    # as mmengine's Runner does: a top-level data_preprocessor (mmpretrain's configs) is the
    # model's unless the model names its own
    if cfg.get('data_preprocessor') is not None:
        model_cfg.setdefault('data_preprocessor', copy.deepcopy(cfg.data_preprocessor))
    # a Pretrained init_cfg would try to read weights: this tool loads them itself
    strip_pretrained(model_cfg)
    model = MODELS.build(model_cfg)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    for pre in (cfg.model.get('data_preprocessor'), cfg.get('data_preprocessor')):
        if isinstance(pre, dict) and pre.get('mean') is not None:
            mean, std = tuple(pre['mean']), tuple(pre.get('std') or (1.0,) * len(pre['mean']))
            break
    name = os.path.splitext(os.path.basename(path))[0]
    return LoadedModel(model=model, name=name, task=task, config=cfg, mean=mean, std=std)


def strip_pretrained(cfg) -> None:
    """Remove every ``Pretrained`` ``init_cfg`` of a model config (in place): the tools load
    the weights themselves."""
    if isinstance(cfg, dict):
        init = cfg.get('init_cfg')
        if isinstance(init, dict) and init.get('type') == 'Pretrained':
            cfg['init_cfg'] = None
        for v in cfg.values():
            strip_pretrained(v)
    elif isinstance(cfg, (list, tuple)):
        for v in cfg:
            strip_pretrained(v)


def has_deploy_form(model: nn.Module) -> bool:
    """Whether the backbone (or the model itself when it has none) can re-parameterise."""
    backbone = getattr(model, 'backbone', None)
    return hasattr(backbone if isinstance(backbone, nn.Module) else model, 'reparameterize')


def reparameterize(model: nn.Module) -> nn.Module:
    """Fold the model into its deploy form in place; clear error when it has none."""
    if not has_deploy_form(model):
        raise ValueError(f'{type(model).__name__} has no reparameterize() (no deploy form)')
    target = model if hasattr(model, 'reparameterize') else model.backbone
    target.reparameterize()
    return model
