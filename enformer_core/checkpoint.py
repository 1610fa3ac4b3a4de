"""Checkpoints: one file reader, one loader, one report, one key-renaming engine.

* :func:`read_state_dict` reads a path or URL with ``torch.load(weights_only=True)`` and returns
  the flat state dict of any wrapper we meet (a bare state dict, mmengine/mmcv checkpoints
  ``{'state_dict', 'meta', ...}``, timm ``.pth.tar`` files, ``{'model': ...}``), with an error
  that says what is wrong: missing, empty, truncated, not a state dict, code in the pickle, or
  tensors holding NaN/Inf.
* :func:`load_checkpoint` loads it into a model: converts an official layout (each backbone
  family declares its :class:`PublishedLayout`), strips or adds ``backbone.``, adapts
  per-centre parameters to another number of centres, and returns a :class:`LoadReport`
  (adapted / missing / unexpected / mismatched keys).  ``strict`` turns a report that does not
  fit into a :class:`CheckpointError` carrying the same text.
* :class:`KeyMap` renames keys in both directions from one table of template pairs, which is
  how the model files write their published layouts.

Every path that reads weights goes through here: :func:`~enformer_core.create_model`,
``init_cfg=dict(type='Pretrained')``, ``tools/train.py`` / ``tools/test.py``, the analysis and
visualisation tools and the converters (``docs/checkpoints.md``).
"""
from __future__ import annotations

import argparse
import collections
import logging
import os
import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .hub import resolve_file

StateDict = Dict[str, torch.Tensor]
logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not fit the model (the message names the keys)."""


# ---------------------------------------------------------------------------- reading files
def _allowed_globals() -> list:
    """The harmless types mmengine and timm checkpoints pickle besides tensors."""
    types: list = [collections.OrderedDict, collections.defaultdict, argparse.Namespace]
    try:
        import numpy as np
        types += [np.ndarray, np.dtype]
        for mod in ('numpy._core.multiarray', 'numpy.core.multiarray'):
            try:
                m = __import__(mod, fromlist=['_reconstruct', 'scalar'])
                types += [m._reconstruct, m.scalar]
            except (ImportError, AttributeError):
                pass
        dtypes = getattr(np, 'dtypes', None)  # numpy >= 1.25 pickles dtypes as these classes
        if dtypes is not None:
            types += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith('DType')]
    except ImportError:  # pragma: no cover
        pass
    try:
        from mmengine.config.config import ConfigDict
        from mmengine.logging.history_buffer import HistoryBuffer
        # the message hub pickles statistics methods as getattr(HistoryBuffer, 'min'):
        # stand in a getattr that resolves exactly those and nothing else
        types += [HistoryBuffer, ConfigDict, (_history_buffer_getattr, 'builtins.getattr')]
    except ImportError:
        pass
    return types


def _history_buffer_getattr(obj, name):
    """``getattr`` restricted to the statistics methods of mmengine's ``HistoryBuffer``."""
    from mmengine.logging.history_buffer import HistoryBuffer
    if obj is HistoryBuffer and name in ('min', 'max', 'mean', 'current',
                                         *HistoryBuffer._statistics_methods):
        return getattr(obj, name)
    raise pickle.UnpicklingError(f'weights-only loading refuses getattr({obj!r}, {name!r})')


_ALLOWED = False


def allow_checkpoint_globals() -> None:
    """Allow-list :func:`_allowed_globals` for every weights-only ``torch.load`` (idempotent).

    mmengine's own ``--resume`` goes through ``torch.load`` too, so this keeps it working
    under torch's weights-only default instead of turning the default off.
    """
    global _ALLOWED
    if not _ALLOWED:
        torch.serialization.add_safe_globals(_allowed_globals())
        _ALLOWED = True


def torch_load(path: str, map_location='cpu'):
    """``torch.load(path, weights_only=True)`` with errors that say what is wrong."""
    allow_checkpoint_globals()
    if not os.path.isfile(path):
        raise CheckpointError(f'checkpoint not found: {path}')
    if os.path.getsize(path) == 0:
        raise CheckpointError(f'checkpoint {path} is empty (0 bytes): an interrupted download '
                              f'or save? Download or save it again.')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f'refused to load {path}: it pickles something other than '
                              f'tensors and plain containers ({exc}). Only state dicts and '
                              f'mmengine/timm checkpoints are accepted.') from None
    except Exception as exc:  # zip/stream errors of a truncated or foreign file
        raise CheckpointError(f'could not read {path} as a PyTorch checkpoint ({exc}); is the '
                              f'file truncated or not a checkpoint?') from None


def unwrap_state_dict(obj, source: str = 'checkpoint') -> StateDict:
    """The flat tensor state dict inside any of the wrappers we meet."""
    if isinstance(obj, dict):
        for key in ('state_dict', 'model', 'module', 'state_dict_ema'):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or \
            not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f'{source} holds no state dict of tensors (top-level type '
                              f'{type(obj).__name__})')
    return OrderedDict((k[7:] if k.startswith('module.') else k, v) for k, v in obj.items())


def check_finite(state: StateDict, source: str = 'checkpoint') -> None:
    """Refuse tensors that hold NaN or Inf (a diverged run saves them without complaint)."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f'{source}: {len(bad)} tensors hold NaN or Inf, e.g. '
                              f'{bad[:5]}; the run that saved it diverged')


def read_state_dict(src: str, map_location='cpu') -> StateDict:
    """Read a checkpoint file or URL (downloaded into the cache, see :mod:`enformer_core.hub`)
    and return its flat, finite state dict."""
    path = resolve_file(str(src))
    state = unwrap_state_dict(torch_load(path, map_location), path)
    check_finite(state, path)
    return state


# ------------------------------------------------------------------------- renaming keys
_FIELD = re.compile(r'\{(\w+)(?::(any|(\d*)n(?:\+(\d+))?))?\}')


class _Template:
    """A key pattern such as ``network.{s:2n+1}.proj.{p:any}``.

    ``{x}`` is an integer, ``{x:any}`` the rest of the key, ``{x:2n}`` / ``{x:2n+1}`` an
    integer stored as ``2x`` / ``2x+1`` on this side (CoC numbers blocks and reducers in one
    list)."""

    def __init__(self, text: str):
        self.text = text
        self.fields: Dict[str, Tuple[str, int, int]] = {}
        parts, pos = [], 0
        for m in _FIELD.finditer(text):
            parts.append(re.escape(text[pos:m.start()]))
            name, kind = m.group(1), m.group(2)
            if kind == 'any':
                self.fields[name] = ('any', 1, 0)
                parts.append(f'(?P<{name}>.+)')
            else:
                a = int(m.group(3) or 1) if kind else 1
                self.fields[name] = ('int', a, int(m.group(4) or 0))
                parts.append(f'(?P<{name}>\\d+)')
            pos = m.end()
        parts.append(re.escape(text[pos:]))
        self.regex = re.compile('^' + ''.join(parts) + '$')

    def match(self, key: str) -> Optional[Dict[str, Union[int, str]]]:
        m = self.regex.match(key)
        if m is None:
            return None
        values: Dict[str, Union[int, str]] = {}
        for name, (kind, a, b) in self.fields.items():
            if kind == 'any':
                values[name] = m.group(name)
                continue
            v = int(m.group(name)) - b
            if v < 0 or v % a:
                return None
            values[name] = v // a
        return values

    def format(self, values) -> str:
        def sub(m):
            kind, a, b = self.fields[m.group(1)]
            v = values[m.group(1)]
            return v if kind == 'any' else str(a * int(v) + b)
        return _FIELD.sub(sub, self.text)


class KeyMap:
    """Rename state-dict keys with ``(published, ours)`` template pairs, in both directions.

    The first pair whose template matches a key wins, so put specific pairs before general
    ones.  ``convert`` returns ``(renamed, unmatched_keys)``.
    """

    def __init__(self, pairs: Sequence[Tuple[str, str]]):
        self.pairs = [(_Template(a), _Template(b)) for a, b in pairs]

    def rename(self, key: str, reverse: bool = False) -> Optional[str]:
        for src, dst in self.pairs:
            if reverse:
                src, dst = dst, src
            values = src.match(key)
            if values is not None:
                return dst.format(values)
        return None

    def convert(self, state: StateDict, reverse: bool = False) -> Tuple[StateDict, List[str]]:
        out: StateDict = OrderedDict()
        unmatched = []
        for k, v in state.items():
            new = self.rename(k, reverse)
            if new is None:
                unmatched.append(k)
            else:
                out[new] = v
        return out, unmatched


@dataclass
class PublishedLayout:
    """The key layout of one family's official checkpoints, and its conversion to ours.

    ``classifier``/``dense`` are the pairs that only a classifier (pre-head norm, head) or a
    dense backbone (per-stage output norms) has; ``common`` the rest.  Ours is the mmpretrain
    ``ImageClassifier`` layout (``backbone.*`` + ``head.fc.*``); a detector's or segmentor's
    checkpoint keeps its backbone below ``backbone.`` and its other keys as they are.
    """
    name: str
    signature: str                 # regex that only keys of this layout match
    common: Sequence[Tuple[str, str]]
    classifier: Sequence[Tuple[str, str]]
    dense: Sequence[Tuple[str, str]]
    _maps: dict = field(default_factory=dict, repr=False)

    def _map(self, kind: str) -> KeyMap:
        if kind not in self._maps:
            extra = {'classifier': self.classifier, 'dense': self.dense,
                     'any': list(self.classifier) + list(self.dense)}[kind]
            self._maps[kind] = KeyMap(list(self.common) + list(extra))
        return self._maps[kind]

    def matches(self, state: StateDict) -> bool:
        sig = re.compile(r'^(backbone\.)?' + self.signature)
        return any(sig.match(k) for k in state)

    def to_ours(self, state: StateDict) -> Tuple[StateDict, List[str]]:
        """Published -> ours; returns ``(converted, unmatched_keys)``."""
        nested = [k for k in state if k.startswith('backbone.')]
        if not nested:  # a classifier (or a bare backbone)
            return self._map('any').convert(state)
        out: StateDict = OrderedDict()
        converted, unmatched = self._map('any').convert({k[9:]: state[k] for k in nested})
        out.update(converted)
        out.update((k, v) for k, v in state.items() if not k.startswith('backbone.'))
        return out, ['backbone.' + k for k in unmatched]

    def to_published(self, state: StateDict) -> Tuple[StateDict, List[str]]:
        """Ours (classifier, detector/segmentor or bare backbone) -> published."""
        if any(k.startswith('head.fc.') for k in state):
            return self._map('classifier').convert(state, reverse=True)
        bare = not any(k.startswith('backbone.') for k in state)
        ours = {('backbone.' + k if bare else k): v for k, v in state.items()}
        backbone = {k: v for k, v in ours.items() if k.startswith('backbone.')}
        converted, unmatched = self._map('dense').convert(backbone, reverse=True)
        out: StateDict = OrderedDict(
            (k if bare else 'backbone.' + k, v) for k, v in converted.items())
        out.update((k, v) for k, v in ours.items() if not k.startswith('backbone.'))
        return out, [k[9:] if bare else k for k in unmatched]


# ------------------------------------------------------------------------- loading
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
