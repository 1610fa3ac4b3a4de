"""Converting checkpoint files between the official layouts and ours.

The converter scripts ``tools/model_converters/{enformer,coc,fec}_to_mmpretrain.py`` are this
module's :func:`main` with the family filled in; they share one set of options::

    python tools/model_converters/enformer_to_mmpretrain.py SRC DST [--reverse]
        [--backbone-only] [--check MODEL] [--strict]

Published -> ours gives an mmengine checkpoint (``{'state_dict', 'meta'}``) in the
mmpretrain ``ImageClassifier`` layout (``backbone.*`` + ``head.fc.*``) that ``tools/test.py``,
``mim test``, ``init_cfg``/``load_from`` and :func:`~enformer_core.create_model` read.  A
detector's or segmentor's checkpoint keeps its neck and heads as they are.  ``--reverse``
writes the official layout from ours.  Loading the source is weights-only.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional

import torch

from . import CheckpointError, PublishedLayout, load_checkpoint, read_state_dict
from ..models import create_model
from ..models.context_cluster import COC_LAYOUT
from ..models.enformer import ENFORMER_LAYOUT
from ..models.fec import FEC_LAYOUT

#: converter family -> (layout, an example create_model name)
FAMILIES: Dict[str, tuple] = {'enformer': (ENFORMER_LAYOUT, 'enformer_s'),
                              'coc': (COC_LAYOUT, 'coc_tiny'),
                              'fec': (FEC_LAYOUT, 'fec_small')}


def convert_state(state: dict, layout: PublishedLayout, reverse: bool = False,
                  backbone_only: bool = False) -> tuple:
    """Convert a state dict; returns ``(converted, report)`` where the report lists the keys
    that matched no rule (``unmatched``), passed through unchanged (``passed_through``: a
    detector's neck and heads) or were dropped (``dropped``, with ``backbone_only``)."""
    if not reverse and not layout.matches(state):
        raise CheckpointError(f'not a checkpoint in the official {layout.name} layout (first '
                              f'keys: {list(state)[:3]}); is it already converted? '
                              f'(--reverse converts ours to the official layout)')
    if reverse:
        out, unmatched = layout.to_published(state)
    else:
        out, unmatched = layout.to_ours(state)
    # a detector's or segmentor's checkpoint: the backbone below backbone., no classifier head
    nested = any(k.startswith('backbone.') for k in state) and \
        not any(k.startswith('head.') for k in state)
    passed = [k for k in out if not k.startswith('backbone.')] if nested else []
    dropped: List[str] = []
    if backbone_only:
        dropped = [k for k in out if not k.startswith('backbone.')]
        out = {k[9:]: v for k, v in out.items() if k.startswith('backbone.')}
        passed = []
    return out, dict(unmatched=unmatched, passed_through=passed, dropped=dropped)


def convert_file(src: str, dst: str, family: str, reverse: bool = False,
                 backbone_only: bool = False, check: Optional[str] = None,
                 strict: bool = False) -> dict:
    """Read ``src``, convert, optionally check the result against ``create_model(check)``,
    write ``dst``; returns the report (also printed)."""
    layout = FAMILIES[family][0]
    state = read_state_dict(src)
    out, report = convert_state(state, layout, reverse, backbone_only)
    if not out:
        raise CheckpointError(f'nothing of {src} could be converted')
    direction = f'ours -> official {layout.name}' if reverse else \
        f'official {layout.name} -> ours'
    lines = [f'{src}: {len(state)} tensors -> {len(out)} ({direction})']
    for name in ('unmatched', 'passed_through', 'dropped'):
        if report[name]:
            lines.append(f'  {len(report[name])} {name.replace("_", " ")}: '
                         + ', '.join(report[name][:8]) + (' ...' if len(report[name]) > 8 else ''))
    if check:
        model = create_model(check)
        target = out if not reverse else layout.to_ours(out)[0]
        fit = load_checkpoint(model, target, strict=False, check_only=True, log=False)
        report['check'] = fit
        lines.append(f'  check against {check}: ' + str(fit).split('\n', 1)[-1]
                     if not fit.fits else f'  check against {check}: every key fits')
    print('\n'.join(lines))
    problems = report['unmatched'] + ([] if 'check' not in report or report['check'].fits
                                      else ['check'])
    if strict and problems:
        raise CheckpointError(f'{src} did not convert cleanly (--strict): see above')
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    meta = dict(converted_from=os.path.basename(src), conversion=direction,
                unmatched=report['unmatched'])
    torch.save({'state_dict': dict(out), 'meta': meta}, dst)
    print(f'saved {dst}')
    return report


def main(family: str, argv=None, description: str = '') -> dict:
    """The command line of the converter scripts (one option set for every family)."""
    layout, example = FAMILIES[family]
    p = argparse.ArgumentParser(
        description=description or f'Convert an official {layout.name} checkpoint to the '
        f'mmpretrain/OpenMMLab layout of enformer_core (or back, with --reverse).',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('src', metavar='SRC', help='input checkpoint (path or URL)')
    p.add_argument('dst', metavar='DST', help='output checkpoint')
    p.add_argument('--reverse', action='store_true',
                   help=f'ours -> the official {layout.name} layout')
    p.add_argument('--backbone-only', action='store_true',
                   help='write the bare backbone (no backbone. prefix, no neck/heads/head)')
    p.add_argument('--check', metavar='MODEL',
                   help=f'create_model name to check the result against (e.g. {example})')
    p.add_argument('--strict', action='store_true',
                   help='fail if a key matches no rule or the --check model does not fit')
    args = p.parse_args(argv)
    try:
        return convert_file(args.src, args.dst, family, args.reverse, args.backbone_only,
                            args.check, args.strict)
    except (CheckpointError, OSError) as exc:
        print(f'ERROR: {exc}', file=sys.stderr)
        sys.exit(2)
