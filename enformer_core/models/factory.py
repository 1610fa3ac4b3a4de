"""Plain-PyTorch entry points (timm style) for users outside OpenMMLab.

    >>> import enformer_core
    >>> model = enformer_core.create_model('enformer_s', pretrained='enformer_s.pth')
    >>> logits = model(images)            # (B, 1000)
    >>> feats = model.forward_features(images)

A classifier's state dict has the mmpretrain ``ImageClassifier`` layout (``backbone.*`` +
``head.fc.*``), so checkpoints move freely between ``create_model`` and mmpretrain.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn

from .checkpoint import CheckpointError, load_state_dict_file, maybe_convert_published

_MODEL_ENTRIES: Dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _MODEL_ENTRIES[fn.__name__] = fn
    return fn


def list_models() -> List[str]:
    return sorted(_MODEL_ENTRIES)


class LinearHead(nn.Module):
    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.fc, nn.Linear):
            nn.init.trunc_normal_(self.fc.weight, std=0.02)
            nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class ClusterClassifier(nn.Module):
    """Backbone returning pooled features ``(B, C)`` + a linear head."""

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int = 1000):
        super().__init__()
        self.backbone = backbone
        self.num_features = num_features
        self.num_classes = num_classes
        self.head = LinearHead(num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)[-1]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reparameterize(self) -> 'ClusterClassifier':
        if hasattr(self.backbone, 'reparameterize'):
            self.backbone.reparameterize()
        return self


def load_classifier_weights(model: nn.Module, path: str, strict: bool = True) -> None:
    """Load our, mmpretrain's or the published layout into ``model`` with a clear error."""
    state = maybe_convert_published(load_state_dict_file(path))
    from .baseline_converters import convert_baseline_checkpoint, is_published_baseline
    if is_published_baseline(state):
        state = convert_baseline_checkpoint(state, strict=False)
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state if k not in own]
    shape = [f'{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}'
             for k in state if k in own and state[k].shape != own[k].shape]
    if strict and (missing or unexpected or shape):
        parts = [f'checkpoint {path} does not fit {type(model).__name__}'
                 f'({getattr(model, "variant", "")}):']
        for name, keys in (('missing', missing), ('unexpected', unexpected),
                           ('shape mismatch', shape)):
            if keys:
                parts.append(f'  {name} keys ({len(keys)}): {keys[:8]}'
                             + (' ...' if len(keys) > 8 else ''))
        if shape or (missing and unexpected):
            parts.append('  (is it a checkpoint of another variant or task?)')
        raise CheckpointError('\n'.join(parts))
    model.load_state_dict({k: v for k, v in state.items() if k in own
                           and own[k].shape == v.shape}, strict=False)


def create_model(name: str, pretrained: Optional[str] = None, **kwargs) -> nn.Module:
    """Build a registered model by name (``list_models()``), optionally loading weights."""
    key = name.lower().replace('-', '_')
    if key not in _MODEL_ENTRIES:
        raise ValueError(f'unknown model {name!r}; available: {list_models()}')
    model = _MODEL_ENTRIES[key](**kwargs)
    model.variant = key
    if pretrained:
        load_classifier_weights(model, pretrained)
    return model
