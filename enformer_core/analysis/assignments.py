"""The cluster assignments of a backbone's clustering modules, for pictures and inspection.

Every clustering module (EnFormer's base clusterings and consensus, the baselines' mixers)
can keep its last assignment (``record = True``, ``last_assignment``); this module switches
recording on for one forward pass and turns the tensors into per-image records.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


@contextlib.contextmanager
def record_assignments(model: nn.Module) -> Iterator[List[nn.Module]]:
    """Make every clustering module keep its last assignment (``last_assignment``).

    Yields the list of recording modules (base clusterings and consensus modules, in
    forward order); recording stops on exit.
    """
    mods = [m for m in model.modules() if hasattr(m, 'record') and hasattr(m, 'last_assignment')]
    for m in mods:
        m.record = True
    try:
        yield mods
    finally:
        for m in mods:
            m.record = False


_CLUSTER_NAME = re.compile(r'(?:^|\.)stages\.(\d+)\.blocks\.(\d+)\.(?:mixer|cluster)\.'
                           r'(?:clusterings\.(\d+)|consensus)$')


@dataclass
class AssignmentRecord:
    """The assignment of one clustering module for one image and one head."""
    name: str                     # module name
    stage: int
    block: int
    kind: str                     # 'partitional' / 'fuzzy' / ... / 'consensus'
    index: int                    # base-clustering index (-1 for the consensus)
    num_centres: int
    centre_grids: List[Tuple[int, int]]   # one (h, w) per base clustering of the centres
    points_grid: Tuple[int, int]  # the agents grid or the stage's pixel grid
    weights: torch.Tensor         # (M, h, w) memberships

    @property
    def title(self) -> str:
        if self.kind == 'consensus':
            return f'consensus (M={self.num_centres})'
        gh, gw = self.centre_grids[0]
        return f'{self.kind} {gh}x{gw}'

    def labels_and_confidence(self, size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
        """Arg-max centre per pixel and its membership, upsampled (nearest) to ``size``."""
        w = F.interpolate(self.weights[None].float(), size=size, mode='nearest')[0]
        conf, labels = w.max(0)
        return labels.numpy().astype(np.int64), conf.numpy()


def _mixer_of(model: nn.Module, name: str) -> nn.Module:
    parent = name.rsplit('.clusterings.', 1)[0] if '.clusterings.' in name \
        else name.rsplit('.', 1)[0]
    return dict(model.named_modules())[parent]


def collect_assignments(backbone: nn.Module, image: torch.Tensor,
                        stages: Optional[Sequence[int]] = None,
                        blocks: Optional[Sequence[int]] = ('last',), head: int = 0
                        ) -> List[AssignmentRecord]:
    """Run ``backbone`` (eval, no grad) on ``image`` (1, C, H, W) and return the assignment of
    every base clustering and of the consensus of the chosen stages/blocks.

    ``blocks`` holds block indices (negative from the end) and/or ``'last'``/``'all'``;
    ``head`` picks the head (heads are folded into the batch: b = B*heads).
    """
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f'expected one image of shape (1, C, H, W), got {tuple(image.shape)}')
    named = {id(m): n for n, m in backbone.named_modules()}
    shapes: Dict[int, Tuple[int, int]] = {}
    hooks = []
    all_mods = [m for m in backbone.modules()
                if hasattr(m, 'record') and hasattr(m, 'last_assignment')]
    if not all_mods:
        raise ValueError(f'{type(backbone).__name__} has no clustering module that records '
                         'assignments (only EnFormer-style mixers do)')
    mixers = {}
    for m in all_mods:
        mixer = _mixer_of(backbone, named[id(m)])
        mixers[id(mixer)] = mixer
    for mixer in mixers.values():
        hooks.append(mixer.register_forward_pre_hook(
            lambda mod, args: shapes.__setitem__(id(mod), tuple(args[0].shape[1:3]))))
    # which (stage, block) pairs are wanted
    depth: Dict[int, int] = {}
    for m in all_mods:
        mt = _CLUSTER_NAME.search(named[id(m)])
        if mt:
            s, b = int(mt.group(1)), int(mt.group(2))
            depth[s] = max(depth.get(s, 0), b + 1)
    want_stages = sorted(depth) if stages is None else list(stages)
    for s in want_stages:
        if s not in depth:
            raise ValueError(f'stage {s} does not exist (stages: {sorted(depth)})')
    try:
        was_training = backbone.training
        backbone.eval()
        with record_assignments(backbone) as mods, torch.no_grad():
            backbone(image)
        backbone.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    records = []
    for m in mods:
        name = named[id(m)]
        mt = _CLUSTER_NAME.search(name)
        if not mt or m.last_assignment is None:
            continue
        s, b = int(mt.group(1)), int(mt.group(2))
        if s not in want_stages or not _block_wanted(b, depth[s], blocks):
            continue
        mixer = _mixer_of(backbone, name)
        pts = shapes[id(mixer)]  # the map (H, W) the mixer saw; its agent grid if it pooled
        if hasattr(mixer, 'agent_grid'):
            pts = mixer.agent_grid(*pts) or pts
        elif getattr(mixer, 'agents', None):
            pts = tuple(mixer.agents)
        a = m.last_assignment  # (B*heads, M, N')
        heads = a.shape[0] // image.shape[0]
        if not 0 <= head < heads:
            raise ValueError(f'head {head} out of range: {name} has {heads} heads')
        weights = a[head].reshape(a.shape[1], *pts).cpu()
        if mt.group(3) is not None:
            kind, idx, grids = m.rule, int(mt.group(3)), [tuple(m.grid)]
        else:
            kind, idx = 'consensus', -1
            grids = [tuple(c.grid) for c in getattr(mixer, 'clusterings', [])]
        records.append(AssignmentRecord(name=name, stage=s, block=b, kind=kind, index=idx,
                                        num_centres=a.shape[1], centre_grids=grids,
                                        points_grid=pts, weights=weights))
        m.last_assignment = None
    return records


def _block_wanted(b: int, n: int, blocks) -> bool:
    if blocks is None:
        return True
    for spec in blocks:
        if spec == 'all':
            return True
        if spec == 'last' and b == n - 1:
            return True
        if isinstance(spec, int) or (isinstance(spec, str) and spec.lstrip('-').isdigit()):
            i = int(spec)
            if (i if i >= 0 else n + i) == b:
                return True
    return False
