"""Renaming state-dict keys between an official layout and ours, in both directions.

A model file writes its family's official layout as one table of ``(official, ours)`` template
pairs (:class:`PublishedLayout`); :class:`KeyMap` applies such a table either way.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

StateDict = Dict[str, torch.Tensor]
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
