"""Small model-inspection helpers shared by the tools and tests."""
from __future__ import annotations

import contextlib
from typing import Iterator, List

import torch.nn as nn


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as BatchNorm running stats excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


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
