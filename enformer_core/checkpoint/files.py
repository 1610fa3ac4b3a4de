"""Reading checkpoint files: weights only, with errors that say what is wrong."""
from __future__ import annotations

import argparse
import collections
import os
import pickle
from collections import OrderedDict
from typing import Dict

import numpy as np
import torch

from ..hub import resolve_file

StateDict = Dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not fit the model (the message names the keys)."""


def _allowed_globals() -> list:
    """The harmless types mmengine and timm checkpoints pickle besides tensors."""
    types: list = [collections.OrderedDict, collections.defaultdict, argparse.Namespace]
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
