"""Loading a state dict into a model: layout conversion, prefixes, adaptation, one report."""
from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from .files import CheckpointError, read_state_dict

StateDict = Dict[str, torch.Tensor]
logger = logging.getLogger(__name__)

#: parameters with one entry per centre (first dim), adapted when the number of centres differs
PER_CENTRE = re.compile(r'(sim_alpha|sim_beta|log_priors|log_vars|key_centre_bias|'
                        r'value_centre_bias)$')


def adapt_per_centre(src: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """First ``n`` centres copied, the rest filled with the mean of ``src`` (the published
    rule for ImageNet weights in a model with more centres); truncated when fewer."""
    out = src.mean(0, keepdim=True).expand(shape).clone()
    n = min(src.shape[0], shape[0])
    out[:n] = src[:n]
    return out


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did; ``str(report)`` is the one readable printout."""
    source: str
    loaded: int = 0
    converted_from: Optional[str] = None
    adapted: List[str] = field(default_factory=list)
    kept_init: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        head = f'{self.source}: {self.loaded} tensors loaded'
        if self.converted_from:
            head += f' (converted from the {self.converted_from} layout)'
        lines = [head]
        for name, what in (('adapted', 'adapted to another number of centres'),
                           ('kept_init', 'kept at their initial values (as published)'),
                           ('missing', 'missing from the checkpoint'),
                           ('unexpected', 'unexpected (not in the model)'),
                           ('mismatched', 'of another shape')):
            items = getattr(self, name)
            if items:
                more = f' ... (+{len(items) - 8})' if len(items) > 8 else ''
                lines.append(f'  {len(items)} {what}: ' + ', '.join(items[:8]) + more)
        if self.mismatched or (self.missing and self.unexpected):
            lines.append('  (a checkpoint of another variant, task or number of classes?)')
        return '\n'.join(lines)


def _find_backbone(model: nn.Module) -> Optional[nn.Module]:
    """The first module that knows how to filter checkpoints (a ClusterBackbone)."""
    for m in model.modules():
        if hasattr(m, 'filter_checkpoint'):
            return m
    return None


def _align_prefix(state: StateDict, own: Sequence[str], prefix: str) -> StateDict:
    if prefix:
        out = OrderedDict((k[len(prefix):], v) for k, v in state.items() if k.startswith(prefix))
        if not out:
            raise CheckpointError(f'no key of the checkpoint starts with {prefix!r} (first '
                                  f'keys: {list(state)[:3]})')
        return out
    own_set = set(own)
    if own_set & set(state):
        return state
    # nothing matches: a classifier's ``backbone.*`` into a bare backbone, or the reverse
    stripped = OrderedDict((k[9:], v) for k, v in state.items() if k.startswith('backbone.'))
    if own_set & set(stripped):
        return stripped
    added = OrderedDict(('backbone.' + k, v) for k, v in state.items())
    return added if own_set & set(added) else state


def load_checkpoint(model: nn.Module, src: Union[str, StateDict], prefix: str = '',
                    strict: bool = True, adapt: bool = True, keep_init: Sequence[str] = (),
                    check_only: bool = False, log: bool = True) -> LoadReport:
    """Load ``src`` (a path, URL or state dict) into ``model`` and report what happened.

    Args:
        prefix: use only the keys below it (``'backbone.'`` for a classifier's or detector's
            backbone); ``''`` also adds or strips ``backbone.`` when that is the only way keys
            can match.
        strict: raise :class:`CheckpointError` (with the report as message) unless every key
            fits, apart from the adaptations below.
        adapt: per-centre parameters of another number of centres are adapted instead of
            mismatching.  The output norms of a dense backbone are kept at their initial
            values when the checkpoint is a classifier's (as the published code does).
        keep_init: regexes of model keys that keep their initial values (a new head).
        check_only: report (and raise, if ``strict``) without changing the model.
    """
    source = src if isinstance(src, str) else '<state dict>'
    state = read_state_dict(src) if isinstance(src, str) else OrderedDict(src)
    report = LoadReport(source=source)
    backbone = _find_backbone(model)
    keep_init = list(keep_init)
    if backbone is not None:
        state, report.converted_from, kept = backbone.filter_checkpoint(state)
        keep_init += kept
    own = model.state_dict()
    state = _align_prefix(state, list(own), prefix)
    state = OrderedDict((k, v) for k, v in state.items()
                        if not any(re.search(p, k) for p in keep_init))
    out: StateDict = OrderedDict()
    for k, v in state.items():
        if k not in own:
            report.unexpected.append(k)
        elif own[k].shape == v.shape:
            out[k] = v
        elif adapt and PER_CENTRE.search(k) and v.shape[1:] == own[k].shape[1:]:
            out[k] = adapt_per_centre(v, own[k].shape).to(own[k].dtype)
            report.adapted.append(f'{k} {tuple(v.shape)}->{tuple(own[k].shape)}')
        else:
            report.mismatched.append(f'{k}: checkpoint {tuple(v.shape)}, model '
                                     f'{tuple(own[k].shape)}')
    for k in own:
        if k in out or k.endswith('num_batches_tracked'):
            continue
        if any(re.search(p, k) for p in keep_init):
            report.kept_init.append(k)
        elif k not in state:
            report.missing.append(k)
    report.loaded = len(out)
    if strict and not report.fits:
        raise CheckpointError(f'checkpoint does not fit {type(model).__name__}: {report}')
    if not check_only:
        model.load_state_dict(out, strict=False)
    if log:
        _log(str(report))
    return report


def _log(text: str) -> None:
    try:
        from mmengine.logging import print_log
        print_log(text, logger='current')
    except ImportError:
        logger.info(text)
