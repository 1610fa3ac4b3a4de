"""Plain-PyTorch models with timm's API, for users outside OpenMMLab.

    >>> import enformer_core
    >>> model = enformer_core.create_model('enformer_s', pretrained=True).eval()
    >>> logits = model(images)                                  # (B, 1000)
    >>> fmap = model.forward_features(images)                   # (B, 320, H/32, W/32)
    >>> emb = model.forward_head(fmap, pre_logits=True)         # (B, 320)
    >>> maps = enformer_core.create_model('enformer_s', features_only=True,
    ...                                   out_indices=(0, 1, 2, 3))(images)

A classifier's state dict has the mmpretrain ``ImageClassifier`` layout (``backbone.*`` +
``head.fc.*``), so checkpoints move freely between :func:`create_model` and mmpretrain.
"""
from __future__ import annotations

import fnmatch
import functools
from typing import Callable, Dict, List, Optional, Sequence, Set, Union

import torch
import torch.nn as nn

from ..checkpoint import load_checkpoint
from ..hub import PRETRAINED_CFGS, PretrainedCfg

_MODEL_ENTRIES: Dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Make ``fn`` (a function building a classifier) a :func:`create_model` name."""
    _MODEL_ENTRIES[fn.__name__] = fn
    return fn


def build_classifier(backbone_cls, arch: str, num_classes: int = 1000,
                     **kwargs) -> 'ClusterClassifier':
    """``backbone_cls(arch)`` pooled at its last stage, plus a linear head (no drop path unless
    asked: the published evaluation and fine-tuning defaults)."""
    kwargs.setdefault('drop_path_rate', 0.0)
    kwargs.setdefault('out_indices', (3,))
    kwargs.setdefault('gap_before_final_norm', True)
    return ClusterClassifier(backbone_cls(arch, **kwargs), num_classes)


def register_variants(backbone_cls, variants: Dict[str, str]) -> None:
    """Register one :func:`create_model` name per variant: ``{'enformer_s': 's', ...}``."""
    for name, arch in variants.items():
        entry = functools.partial(build_classifier, backbone_cls, arch)
        entry.__name__ = name
        _MODEL_ENTRIES[name] = entry


def list_models(pattern: str = '*', pretrained: bool = False) -> List[str]:
    """Model names matching the shell-style ``pattern`` (``'enformer_*'``); with
    ``pretrained`` only those with published weights."""
    names = sorted(n for n in _MODEL_ENTRIES if fnmatch.fnmatch(n, pattern))
    return [n for n in names if n in PRETRAINED_CFGS] if pretrained else names


class ClusterClassifier(nn.Module):
    """A backbone and a linear head (``backbone.*`` + ``head.fc.*``), timm-style.

    The backbone must return the pooled, normalised ``(B, C)`` vector of its last stage
    (``out_indices=(3,)``, ``gap_before_final_norm=True``); :meth:`forward_features` runs it
    up to the unpooled map and :meth:`forward_head` applies the pooling and the norm.
    """

    def __init__(self, backbone: nn.Module, num_classes: int = 1000):
        super().__init__()
        self.backbone = backbone
        self.last_stage = backbone.num_stages - 1
        self.num_features = backbone.embed_dims[self.last_stage]
        self.head = nn.Module()
        self.reset_classifier(num_classes)
        self.pretrained_cfg: dict = {}

    # ----------------------------------------------------------------- timm API
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's unpooled map ``(B, C, H/32, W/32)``, before its output norm."""
        return self.backbone.forward_stages(x, (self.last_stage,))[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool and normalise a :meth:`forward_features` map; logits unless ``pre_logits``."""
        x = self.backbone.stage_output(self.last_stage, x)
        return x if pre_logits else self.head.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.fc(self.backbone(x)[-1])

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised head (``0``: none, the model returns features)."""
        self.num_classes = num_classes
        fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(fc, nn.Linear):
            nn.init.trunc_normal_(fc.weight, std=0.02)
            nn.init.zeros_(fc.bias)
        if len(list(self.head.parameters())):
            fc = fc.to(next(self.head.parameters()))
        self.head.fc = fc

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.with_cp = enable

    def no_weight_decay(self) -> Set[str]:
        """Names of the parameters trained without weight decay (every 1-D parameter: norms,
        biases, similarity scales and offsets, layer scales), as in the published recipe."""
        return {n for n, p in self.named_parameters() if p.ndim <= 1}

    @property
    def default_cfg(self) -> dict:
        return self.pretrained_cfg

    def reparameterize(self) -> 'ClusterClassifier':
        """Fold the backbone into its deploy form (when it has one); outputs unchanged."""
        if hasattr(self.backbone, 'reparameterize'):
            self.backbone.reparameterize()
        return self


def create_model(name: str, pretrained: Union[bool, str] = False,
                 num_classes: Optional[int] = None, features_only: bool = False,
                 out_indices: Sequence[int] = (0, 1, 2, 3), **kwargs) -> nn.Module:
    """Build a registered model by name (:func:`list_models`), optionally with weights.

    Args:
        pretrained: ``True`` for the published weights of ``name`` (downloaded into the torch
            hub cache, see :mod:`enformer_core.hub`), or a path / URL of a checkpoint in our,
            mmpretrain's or the published layout.  Loading is weights-only and strict; a head
            of another size (``num_classes``) stays freshly initialised.
        num_classes: classes of the head (default 1000; ``0``: no head).
        features_only: return the backbone with the maps of ``out_indices`` (strides
            4/8/16/32, each through its output norm) and a ``feature_info`` list.
        kwargs: backbone options (``drop_path_rate``, ``with_cp``, ...).
    """
    key = name.lower().replace('-', '_')
    if key not in _MODEL_ENTRIES:
        raise ValueError(f'unknown model {name!r}; available: {list_models()}')
    if features_only:
        kwargs.update(out_indices=tuple(out_indices), gap_before_final_norm=False)
    model = _MODEL_ENTRIES[key](num_classes=1000 if num_classes is None else num_classes,
                                **kwargs)
    if features_only:
        model = model.backbone
    cfg = PRETRAINED_CFGS.get(key)
    model.pretrained_cfg = (cfg or PretrainedCfg(url='')).to_dict()
    model.pretrained_cfg['architecture'] = key
    model.variant = key
    if pretrained:
        if pretrained is True:
            if cfg is None:
                raise ValueError(f'no published weights are known for {key!r} (models with '
                                 f'weights: {list_models(pretrained=True)}); pass '
                                 f'pretrained=PATH_OR_URL')
            pretrained = cfg.url
        head = [] if features_only or num_classes in (None, 1000) else [r'^head\.fc\.']
        load_checkpoint(model, str(pretrained), strict=True, keep_init=head)
    return model
