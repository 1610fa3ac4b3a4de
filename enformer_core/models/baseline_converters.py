"""Published Context Cluster / FEC checkpoint layouts <-> ours, and Pretrained loading.

Published layout (``shared/spec/coc_*_state_dict.txt``, ``fec_small_state_dict.txt``)::

    patch_embed.proj.*                       stem conv
    network.{2i}.{j}.token_mixer.*           block j of stage i (mixer), also norm1/norm2/mlp/
                                             layer_scale_1/layer_scale_2
    network.{2i+1}.proj.*                    CoC reducer after stage i
    network.{2i+1}.conv_{f,v,skip}.*, norm2.*  FEC cluster pooling after stage i
    norm.*  /  norm{2i}.* (dense)            output GroupNorm(s)
    head.*                                   classifier

Ours (mmpretrain ``ImageClassifier`` layout, what :class:`ClusterClassifier` saves)::

    backbone.stem.*, backbone.stages.{i}.blocks.{j}.{mixer,norm1,norm2,mlp,layer_scale_*}.*,
    backbone.stages.{i}.downsample.{*, conv_f, conv_v, conv_skip, norm}.*,
    backbone.post_norm{i}.*, head.fc.*

The functions here are pure (state dict in, state dict out); ``tools/model_converters/
{coc,fec}_to_enformer_core.py`` wrap them.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from .checkpoint import CheckpointError, format_report, load_state_dict_file, strip_prefix

_BLOCK_PARTS = r'(token_mixer|norm1|norm2|mlp|layer_scale_1|layer_scale_2)'

Rule = Tuple[str, Callable[[re.Match], str]]


def _mixer(name: str) -> str:
    return 'mixer' if name == 'token_mixer' else name


def _unmixer(name: str) -> str:
    return 'token_mixer' if name == 'mixer' else name


#: published -> ours (ours as the classifier layout)
_TO_OURS: List[Rule] = [
    (r'^patch_embed\.proj\.(weight|bias)$', lambda m: f'backbone.stem.{m[1]}'),
    (r'^network\.(\d+)\.(\d+)\.' + _BLOCK_PARTS + r'(.*)$',
     lambda m: (f'backbone.stages.{int(m[1]) // 2}.blocks.{m[2]}.{_mixer(m[3])}{m[4]}'
                if int(m[1]) % 2 == 0 else '')),
    (r'^network\.(\d+)\.proj\.(weight|bias)$',
     lambda m: f'backbone.stages.{int(m[1]) // 2}.downsample.{m[2]}' if int(m[1]) % 2 else ''),
    (r'^network\.(\d+)\.(conv_f|conv_v|conv_skip)\.(weight|bias)$',
     lambda m: (f'backbone.stages.{int(m[1]) // 2}.downsample.{m[2]}.{m[3]}'
                if int(m[1]) % 2 else '')),
    (r'^network\.(\d+)\.norm2\.(weight|bias)$',
     lambda m: f'backbone.stages.{int(m[1]) // 2}.downsample.norm.{m[2]}' if int(m[1]) % 2
     else ''),
    (r'^norm\.(weight|bias)$', lambda m: f'backbone.post_norm3.{m[1]}'),
    (r'^norm(\d+)\.(weight|bias)$',
     lambda m: f'backbone.post_norm{int(m[1]) // 2}.{m[2]}' if int(m[1]) % 2 == 0 else ''),
    (r'^head\.(weight|bias)$', lambda m: f'head.fc.{m[1]}'),
]

#: ours (classifier layout) -> published
_TO_PUBLISHED: List[Rule] = [
    (r'^backbone\.stem\.(weight|bias)$', lambda m: f'patch_embed.proj.{m[1]}'),
    (r'^backbone\.stages\.(\d+)\.blocks\.(\d+)\.(mixer|norm1|norm2|mlp|layer_scale_1|'
     r'layer_scale_2)(.*)$',
     lambda m: f'network.{2 * int(m[1])}.{m[2]}.{_unmixer(m[3])}{m[4]}'),
    (r'^backbone\.stages\.(\d+)\.downsample\.(weight|bias)$',
     lambda m: f'network.{2 * int(m[1]) + 1}.proj.{m[2]}'),
    (r'^backbone\.stages\.(\d+)\.downsample\.(conv_f|conv_v|conv_skip)\.(weight|bias)$',
     lambda m: f'network.{2 * int(m[1]) + 1}.{m[2]}.{m[3]}'),
    (r'^backbone\.stages\.(\d+)\.downsample\.norm\.(weight|bias)$',
     lambda m: f'network.{2 * int(m[1]) + 1}.norm2.{m[2]}'),
    (r'^head\.fc\.(weight|bias)$', lambda m: f'head.{m[1]}'),
]


def _apply(rules: List[Rule], key: str) -> Optional[str]:
    for pattern, fn in rules:
        m = re.match(pattern, key)
        if m:
            return fn(m) or None
    return None


def is_published_baseline(state: Dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` has the published CoC/FEC layout (optionally below ``backbone.``)."""
    return any(re.match(r'^(backbone\.)?(patch_embed\.proj\.|network\.\d+\.)', k) for k in state)


def convert_baseline_state(state: Dict[str, torch.Tensor], direction: str = 'published_to_ours',
                           classifier: bool = True
                           ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Convert a CoC/FEC state dict; returns ``(converted, unmatched_keys)``.

    ``direction``: ``'published_to_ours'`` or ``'ours_to_published'``.
    ``classifier``: our side is the classifier layout (``backbone.*`` + ``head.fc.*``); with
    ``False`` it is a bare backbone (no ``backbone.`` prefix, head keys unmatched).
    Published detection/segmentation checkpoints (backbone below ``backbone.``, dense
    ``norm{0,2,4,6}``) convert too: their non-backbone keys (neck, heads) are passed through.
    For ``ours_to_published``, ``post_norm3`` becomes ``norm`` when a head is present (the
    classifier layout) and ``norm6`` otherwise (the published dense layout).
    """
    if direction not in ('published_to_ours', 'ours_to_published'):
        raise ValueError(f'unknown direction {direction!r}; expected "published_to_ours" or '
                         '"ours_to_published"')
    out: Dict[str, torch.Tensor] = OrderedDict()
    unmatched: List[str] = []
    if direction == 'published_to_ours':
        dense = any(k.startswith('backbone.') for k in state) and is_published_baseline(
            {k[9:]: v for k, v in state.items() if k.startswith('backbone.')})
        for k, v in state.items():
            if dense and not k.startswith('backbone.'):
                out[k] = v  # neck / heads of a published detector or segmentor
                continue
            key = k[9:] if k.startswith('backbone.') else k
            new = _apply(_TO_OURS, key)
            if new is None:
                unmatched.append(k)
                continue
            if not classifier or dense:
                if new.startswith('head.'):
                    unmatched.append(k)
                    continue
                if not classifier:
                    new = new[len('backbone.'):]
            out[new] = v
        return out, unmatched
    has_head = any(k.startswith('head.') for k in state)
    for k, v in state.items():
        key = k if classifier else 'backbone.' + k
        m = re.match(r'^backbone\.post_norm(\d)\.(weight|bias)$', key)
        if m:
            i = int(m[1])
            new = f'norm.{m[2]}' if (i == 3 and has_head) else f'norm{2 * i}.{m[2]}'
        else:
            new = _apply(_TO_PUBLISHED, key)
        if new is None:
            unmatched.append(k)
            continue
        out[new] = v
    return out, unmatched


def convert_baseline_checkpoint(state: Dict[str, torch.Tensor],
                                direction: str = 'published_to_ours', classifier: bool = True,
                                strict: bool = True) -> Dict[str, torch.Tensor]:
    """:func:`convert_baseline_state` that raises :class:`CheckpointError` naming the
    unmatched keys (``strict``) or drops them."""
    out, unmatched = convert_baseline_state(state, direction, classifier)
    if unmatched and strict:
        raise CheckpointError(f'{len(unmatched)} keys match no rule of the CoC/FEC {direction} '
                              f'conversion: {unmatched[:10]}' + (' ...' if len(unmatched) > 10
                                                                 else ''))
    return out


def load_baseline_pretrained(model: nn.Module, checkpoint: str, prefix: str = '',
                             strict: bool = False, logger=None) -> dict:
    """Load ``checkpoint`` (ours, mmpretrain's or the published CoC/FEC layout) into a
    baseline backbone; keys below ``prefix`` (e.g. ``'backbone.'``) are used.

    Returns and logs a report with ``missing``, ``unexpected`` and ``mismatched`` (shape)
    keys; ``strict=True`` raises :class:`CheckpointError` if any is non-empty.
    """
    state = load_state_dict_file(checkpoint)
    if is_published_baseline(state):
        state, _ = convert_baseline_state(state, 'published_to_ours', classifier=True)
    if prefix:
        state = strip_prefix(state, prefix)
    own = model.state_dict()
    mismatched = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                  for k, v in state.items() if k in own and own[k].shape != v.shape]
    result = model.load_state_dict({k: v for k, v in state.items()
                                    if k not in own or own[k].shape == v.shape}, strict=False)
    report = dict(adapted=[], missing=list(result.missing_keys),
                  unexpected=list(result.unexpected_keys), mismatched=mismatched)
    text = format_report(report, checkpoint)
    try:
        from mmengine.logging import print_log
        print_log(text, logger=logger or 'current')
    except Exception:  # pragma: no cover
        print(text)
    if strict and (report['missing'] or report['unexpected'] or mismatched):
        raise CheckpointError(text)
    return report


def convert_file(src: str, dst: str, direction: str = 'published_to_ours',
                 classifier: bool = True, check_model: Optional[str] = None,
                 family: str = 'CoC/FEC') -> dict:
    """Convert the checkpoint file ``src`` and save it to ``dst`` (what the CLIs run).

    Loads weights-only, prints every unmatched key, saves ``{'state_dict': converted}`` (an
    mmengine checkpoint that ``load_from``/``tools/test.py`` and :func:`create_model` read).
    ``check_model`` (a :func:`~enformer_core.models.factory.create_model` name such as
    ``'coc_tiny'``) loads the result into that model and reports missing/unexpected keys.
    Returns ``dict(num_in, num_out, unmatched, missing, unexpected)``.
    """
    state = load_state_dict_file(src)
    if direction == 'published_to_ours' and not is_published_baseline(state):
        raise CheckpointError(f'{src} does not look like a published {family} checkpoint '
                              f'(no patch_embed.proj.* / network.N.* keys; first keys: '
                              f'{list(state)[:3]})')
    out, unmatched = convert_baseline_state(state, direction, classifier)
    print(f'{src}: {len(state)} tensors -> {len(out)} converted ({direction})')
    for k in unmatched:
        print(f'  unmatched (dropped): {k}')
    report = dict(num_in=len(state), num_out=len(out), unmatched=unmatched, missing=[],
                  unexpected=[])
    if check_model:
        from .factory import create_model
        model = create_model(check_model)
        target = out if direction == 'published_to_ours' else convert_baseline_state(
            out, 'published_to_ours', classifier=True)[0]
        if not classifier and direction == 'published_to_ours':
            target = {'backbone.' + k: v for k, v in target.items()}
        own = model.state_dict()
        report['missing'] = [k for k in own if k not in target]
        report['unexpected'] = [k for k in target if k not in own]
        bad = [k for k in target if k in own and own[k].shape != target[k].shape]
        print(f'  check against {check_model}: {len(report["missing"])} missing, '
              f'{len(report["unexpected"])} unexpected, {len(bad)} shape mismatches')
        for name in ('missing', 'unexpected'):
            for k in report[name]:
                print(f'    {name}: {k}')
        for k in bad:
            print(f'    shape mismatch: {k} {tuple(target[k].shape)} vs {tuple(own[k].shape)}')
        report['mismatched'] = bad
    torch.save({'state_dict': out, 'meta': {'converted_from': str(src), 'direction': direction}},
               dst)
    print(f'saved {dst}')
    return report
