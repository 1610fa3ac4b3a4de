"""Checkpoint loading (weights-only), shape adaptation and layout conversion.

* :func:`load_state_dict_file` reads any of: a bare state dict, an mmengine checkpoint
  (``state_dict`` + ``meta`` + ``message_hub``...), a timm/DeiT-style ``{'model': ...}``, always
  with ``torch.load(weights_only=True)`` (mmengine's few pickled types are allow-listed by
  :mod:`enformer_core.utils.safe_load`).
* :func:`load_pretrained` loads ImageNet weights into any EnFormer backbone, adapting
  per-centre parameters whose number of centres differs and reporting every key it could
  not match.
* :func:`convert_checkpoint` maps the published EnFormer layout
  (``shared/spec/enformer_s_state_dict*.txt``) to ours and back.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..utils.safe_load import safe_torch_load


class CheckpointError(ValueError):
    """A checkpoint does not fit the model (the message names the keys)."""


def load_state_dict_file(path: str) -> Dict[str, torch.Tensor]:
    """Read a checkpoint file and return its (flat) state dict of tensors."""
    obj = safe_torch_load(path)
    if isinstance(obj, dict):
        for key in ('state_dict', 'model', 'module', 'state_dict_ema'):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f'{path} does not contain a state dict of tensors')
    return OrderedDict((k[7:] if k.startswith('module.') else k, v) for k, v in obj.items())


def strip_prefix(state: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    if not prefix:
        return dict(state)
    out = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not out:
        raise CheckpointError(f'no key of the checkpoint starts with prefix {prefix!r} '
                              f'(first keys: {list(state)[:3]})')
    return out


#: per-centre parameters (last dim or first dim indexes centres) adapted when M differs
_PER_CENTRE = re.compile(r'(sim_alpha|sim_beta|log_priors|log_vars|'
                         r'key_centre_bias|value_centre_bias)$')


def adapt_per_centre(src: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Copy the first ``n`` centres of ``src`` and fill the rest with the mean of ``src``
    (ARCHITECTURE.md §8); truncates when the target has fewer centres."""
    out = src.mean(0, keepdim=True).expand(shape).clone()
    n = min(src.shape[0], shape[0])
    out[:n] = src[:n]
    return out


def adapt_state_dict(model: nn.Module, state: Dict[str, torch.Tensor]
                     ) -> Tuple[Dict[str, torch.Tensor], List[str], List[str]]:
    """Return (adapted state, adapted keys, keys dropped for an irreconcilable shape)."""
    own = model.state_dict()
    out, adapted, mismatched = {}, [], []
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            if _PER_CENTRE.search(k) and v.shape[1:] == own[k].shape[1:]:
                out[k] = adapt_per_centre(v, own[k].shape).to(own[k].dtype)
                adapted.append(f'{k}: {tuple(v.shape)} -> {tuple(own[k].shape)}')
            else:
                mismatched.append(f'{k}: checkpoint {tuple(v.shape)} vs model '
                                  f'{tuple(own[k].shape)}')
            continue
        out[k] = v
    return out, adapted, mismatched


def load_pretrained(model: nn.Module, checkpoint: str, prefix: str = '',
                    strict: bool = False, logger=None) -> dict:
    """Load ``checkpoint`` (optionally below ``prefix``) into ``model`` with adaptation.

    Returns a report dict with ``adapted``, ``missing``, ``unexpected`` and ``mismatched``
    key lists, and logs it.  With ``strict=True`` any missing/unexpected/mismatched key
    raises :class:`CheckpointError` naming them.
    """
    state = load_state_dict_file(checkpoint)
    state = maybe_convert_published(state)
    if prefix:
        state = strip_prefix(state, prefix)
    state, adapted, mismatched = adapt_state_dict(model, state)
    result = model.load_state_dict(state, strict=False)
    # the BatchNorm step counters carry no information worth a warning
    missing = [k for k in result.missing_keys if not k.endswith('num_batches_tracked')]
    report = dict(adapted=adapted, missing=missing, unexpected=list(result.unexpected_keys),
                  mismatched=mismatched)
    _log_report(report, checkpoint, logger)
    if strict and (missing or report['unexpected'] or mismatched):
        raise CheckpointError(format_report(report, checkpoint))
    return report


def format_report(report: dict, checkpoint: str) -> str:
    lines = [f'loaded {checkpoint}:']
    for key in ('adapted', 'missing', 'unexpected', 'mismatched'):
        items = report[key]
        if items:
            shown = ', '.join(items[:12]) + (f', ... (+{len(items) - 12})'
                                              if len(items) > 12 else '')
            lines.append(f'  {key} keys ({len(items)}): {shown}')
    if len(lines) == 1:
        lines.append('  all keys matched')
    return '\n'.join(lines)


def _log_report(report: dict, checkpoint: str, logger=None) -> None:
    text = format_report(report, checkpoint)
    try:
        from mmengine.logging import print_log
        print_log(text, logger=logger or 'current')
    except Exception:  # pragma: no cover
        print(text)


# --------------------------------------------------------------------------------------
# Published EnFormer layout <-> ours
# --------------------------------------------------------------------------------------
_BLOCK = r'stages\.(\d+)\.blocks\.(\d+)\.'
#: (published regex, ours template) pairs for the *classifier* layout.  Ours is the
#: mmpretrain ImageClassifier layout: ``backbone.*`` + ``head.fc.*``.
_PUBLISHED_TO_OURS: List[Tuple[str, str]] = [
    (r'^stem\.aggregate1\.(.*)$', r'backbone.stem.conv1.\1'),
    (r'^stem\.aggregate2\.(.*)$', r'backbone.stem.conv2.\1'),
    (r'^stem\.norm([12])\.(.*)$', r'backbone.stem.norm\1.\2'),
    (r'^' + _BLOCK + r'cluster\.sim_(alpha|beta)$',
     r'backbone.stages.\1.blocks.\2.mixer.consensus.sim_\3'),
    (r'^' + _BLOCK + r'cluster\.proj\.linear\.1\.(.*)$',
     r'backbone.stages.\1.blocks.\2.mixer.proj_in.\3'),
    (r'^' + _BLOCK + r'cluster\.cluster_module_(\d+)\.(.*)$',
     r'backbone.stages.\1.blocks.\2.mixer.clusterings.\3.\4'),
    (r'^' + _BLOCK + r'cluster\.proj2\.gamma$', r'backbone.stages.\1.blocks.\2.mixer.proj_out.gamma'),
    (r'^' + _BLOCK + r'cluster\.proj2\.linear\.1\.(.*)$',
     r'backbone.stages.\1.blocks.\2.mixer.proj_out.fc.\3'),
    (r'^' + _BLOCK + r'ffn\.ffn_layers\.0\.conv\.(.*)$',
     r'backbone.stages.\1.blocks.\2.ffn.dwconv.conv.\3'),
    (r'^' + _BLOCK + r'ffn\.ffn_layers\.0\.bn\.(.*)$',
     r'backbone.stages.\1.blocks.\2.ffn.dwconv.bn.\3'),
    (r'^' + _BLOCK + r'ffn\.ffn_layers\.0\.norm\.(.*)$',
     r'backbone.stages.\1.blocks.\2.ffn.dwconv.bn_out.\3'),
    (r'^' + _BLOCK + r'ffn\.ffn_layers\.0\.conv_(\d+)\.(.*)$',
     r'backbone.stages.\1.blocks.\2.ffn.dwconv.branch_convs.\3.\4'),
    (r'^' + _BLOCK + r'ffn\.ffn_layers\.0\.bn_(\d+)\.(.*)$',
     r'backbone.stages.\1.blocks.\2.ffn.dwconv.branch_bns.\3.\4'),
    (r'^' + _BLOCK + r'ffn\.ffn_layers\.1\.linear\.1\.(.*)$',
     r'backbone.stages.\1.blocks.\2.ffn.fc1.\3'),
    (r'^' + _BLOCK + r'ffn\.ffn_layers\.3\.gamma$', r'backbone.stages.\1.blocks.\2.ffn.fc2.gamma'),
    (r'^' + _BLOCK + r'ffn\.ffn_layers\.3\.linear\.0\.(.*)$',
     r'backbone.stages.\1.blocks.\2.ffn.fc2.fc.\3'),
    (r'^' + _BLOCK + r'norm([12])\.(.*)$', r'backbone.stages.\1.blocks.\2.norm\3.\4'),
    (r'^stages\.(\d+)\.down\.aggregate\.(.*)$', r'backbone.stages.\1.downsample.conv.\2'),
    (r'^stages\.(\d+)\.down\.norm\.(.*)$', r'backbone.stages.\1.downsample.norm.\2'),
    (r'^post_norm(\d)\.(.*)$', r'backbone.post_norm\1.\2'),
    (r'^classifier_pre_norm\.(.*)$', r'backbone.post_norm3.\1'),
    (r'^head\.(weight|bias)$', r'head.fc.\1'),
]


# The inverse table is written out (rather than derived) because the published names are
# not regular (``ffn_layers.0/1/3``, ``linear.0/1``): ours -> published.
_OURS_TO_PUBLISHED: List[Tuple[str, str]] = [
    (r'^backbone\.stem\.conv1\.(.*)$', r'stem.aggregate1.\1'),
    (r'^backbone\.stem\.conv2\.(.*)$', r'stem.aggregate2.\1'),
    (r'^backbone\.stem\.norm([12])\.(.*)$', r'stem.norm\1.\2'),
    (r'^backbone\.' + _BLOCK + r'mixer\.consensus\.sim_(alpha|beta)$',
     r'stages.\1.blocks.\2.cluster.sim_\3'),
    (r'^backbone\.' + _BLOCK + r'mixer\.proj_in\.(.*)$',
     r'stages.\1.blocks.\2.cluster.proj.linear.1.\3'),
    (r'^backbone\.' + _BLOCK + r'mixer\.clusterings\.(\d+)\.(.*)$',
     r'stages.\1.blocks.\2.cluster.cluster_module_\3.\4'),
    (r'^backbone\.' + _BLOCK + r'mixer\.proj_out\.gamma$', r'stages.\1.blocks.\2.cluster.proj2.gamma'),
    (r'^backbone\.' + _BLOCK + r'mixer\.proj_out\.fc\.(.*)$',
     r'stages.\1.blocks.\2.cluster.proj2.linear.1.\3'),
    (r'^backbone\.' + _BLOCK + r'ffn\.dwconv\.conv\.(.*)$',
     r'stages.\1.blocks.\2.ffn.ffn_layers.0.conv.\3'),
    (r'^backbone\.' + _BLOCK + r'ffn\.dwconv\.bn\.(.*)$',
     r'stages.\1.blocks.\2.ffn.ffn_layers.0.bn.\3'),
    (r'^backbone\.' + _BLOCK + r'ffn\.dwconv\.bn_out\.(.*)$',
     r'stages.\1.blocks.\2.ffn.ffn_layers.0.norm.\3'),
    (r'^backbone\.' + _BLOCK + r'ffn\.dwconv\.branch_convs\.(\d+)\.(.*)$',
     r'stages.\1.blocks.\2.ffn.ffn_layers.0.conv_\3.\4'),
    (r'^backbone\.' + _BLOCK + r'ffn\.dwconv\.branch_bns\.(\d+)\.(.*)$',
     r'stages.\1.blocks.\2.ffn.ffn_layers.0.bn_\3.\4'),
    (r'^backbone\.' + _BLOCK + r'ffn\.fc1\.(.*)$', r'stages.\1.blocks.\2.ffn.ffn_layers.1.linear.1.\3'),
    (r'^backbone\.' + _BLOCK + r'ffn\.fc2\.gamma$', r'stages.\1.blocks.\2.ffn.ffn_layers.3.gamma'),
    (r'^backbone\.' + _BLOCK + r'ffn\.fc2\.fc\.(.*)$',
     r'stages.\1.blocks.\2.ffn.ffn_layers.3.linear.0.\3'),
    (r'^backbone\.' + _BLOCK + r'norm([12])\.(.*)$', r'stages.\1.blocks.\2.norm\3.\4'),
    (r'^backbone\.stages\.(\d+)\.downsample\.conv\.(.*)$', r'stages.\1.down.aggregate.\2'),
    (r'^backbone\.stages\.(\d+)\.downsample\.norm\.(.*)$', r'stages.\1.down.norm.\2'),
    (r'^head\.fc\.(weight|bias)$', r'head.\1'),
]


def _apply(rules: List[Tuple[str, str]], key: str) -> Optional[str]:
    for pattern, template in rules:
        new, n = re.subn(pattern, template, key)
        if n:
            return new
    return None


def convert_checkpoint(state: Dict[str, torch.Tensor], direction: str = 'published_to_ours',
                       classifier: bool = True, strict: bool = True
                       ) -> Dict[str, torch.Tensor]:
    """Convert an EnFormer state dict between the published layout and ours.

    ``direction``: ``'published_to_ours'`` or ``'ours_to_published'``.  Un-fused and fused
    (re-parameterised) layouts both convert (the fused one simply has fewer keys).
    ``classifier``: our side is the full classifier layout (``backbone.*``/``head.fc.*``);
    with ``False`` our side is a bare backbone (no ``backbone.`` prefix).  For
    ``ours_to_published`` of a classifier, ``backbone.post_norm3`` becomes
    ``classifier_pre_norm`` when a head is present.  Unmatched keys raise
    :class:`CheckpointError` (``strict``) naming them, or are dropped.
    """
    if direction not in ('published_to_ours', 'ours_to_published'):
        raise ValueError(f'unknown direction {direction!r}')
    out: Dict[str, torch.Tensor] = OrderedDict()
    unmatched = []
    if direction == 'published_to_ours':
        for k, v in state.items():
            new = _apply(_PUBLISHED_TO_OURS, k[9:] if k.startswith('backbone.') else k)
            if new is None:
                unmatched.append(k)
                continue
            if not classifier:
                if new.startswith('head.'):
                    unmatched.append(k)
                    continue
                new = new[len('backbone.'):]
            out[new] = v
    else:
        has_head = any(k.startswith('head.') for k in state)
        for k, v in state.items():
            key = k if classifier else 'backbone.' + k
            if has_head and key.startswith('backbone.post_norm3.'):
                out['classifier_pre_norm.' + key.rsplit('.', 1)[1]] = v
                continue
            m = re.match(r'^backbone\.post_norm(\d)\.(.*)$', key)
            new = f'post_norm{m.group(1)}.{m.group(2)}' if m else _apply(_OURS_TO_PUBLISHED, key)
            if new is None:
                unmatched.append(k)
                continue
            out[new] = v
    if unmatched and strict:
        raise CheckpointError(f'{len(unmatched)} keys match no rule of the {direction} '
                              f'conversion: {unmatched[:10]}')
    return out


def is_published_layout(state: Dict[str, torch.Tensor]) -> bool:
    return any(re.search(r'(^|\.)stages\.\d+\.blocks\.\d+\.cluster\.', k) for k in state)


def maybe_convert_published(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Convert a published-layout state dict to ours (classifier layout); others pass."""
    if not is_published_layout(state):
        return state
    return convert_checkpoint(state, 'published_to_ours', classifier=True, strict=False)
