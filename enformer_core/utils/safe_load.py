"""Weights-only checkpoint loading that still reads mmengine checkpoints.

torch >= 2.6 defaults ``torch.load`` to ``weights_only=True``; mmengine 0.10.7 checkpoints
also pickle a few harmless objects (``HistoryBuffer`` in the message hub, numpy arrays and
scalars, ``ConfigDict``), so ``--resume`` and ``load_checkpoint`` fail.  Rather than turning
weights-only loading off, :func:`allow_mmengine_globals` allow-lists exactly those types
(importing :mod:`enformer_core` calls it).
"""
from __future__ import annotations

import torch

_DONE = False


def _mmengine_safe_types() -> list:
    types = []
    try:
        import numpy as np
        types += [np.ndarray, np.dtype]
        try:
            from numpy.core.multiarray import _reconstruct, scalar  # numpy < 2 path
        except Exception:  # pragma: no cover
            from numpy._core.multiarray import _reconstruct, scalar  # type: ignore
        types += [_reconstruct, scalar]
        try:
            from numpy._core.multiarray import _reconstruct as r2, scalar as s2  # type: ignore
            types += [r2, s2]
        except Exception:  # pragma: no cover
            pass
        # numpy >= 1.25 pickles dtypes as instances of np.dtypes.*DType classes
        dtypes = getattr(np, 'dtypes', None)
        if dtypes is not None:
            types += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith('DType')]
    except Exception:  # pragma: no cover
        pass
    try:
        from mmengine.logging.history_buffer import HistoryBuffer
        types.append(HistoryBuffer)
    except Exception:  # pragma: no cover
        pass
    try:
        from mmengine.config.config import ConfigDict
        types.append(ConfigDict)
    except Exception:  # pragma: no cover
        pass
    import collections
    types += [collections.OrderedDict, collections.defaultdict]
    # the message hub pickles its statistics methods as getattr(HistoryBuffer, 'min') etc.:
    # stand in a getattr that resolves exactly those and nothing else
    types.append((_history_buffer_getattr, 'builtins.getattr'))
    return types


def _history_buffer_getattr(obj, name):
    """``getattr`` restricted to the statistics methods of mmengine's HistoryBuffer."""
    import pickle
    try:
        from mmengine.logging.history_buffer import HistoryBuffer
    except Exception:  # pragma: no cover
        HistoryBuffer = None
    if HistoryBuffer is not None and obj is HistoryBuffer and \
            name in ('min', 'max', 'mean', 'current', *HistoryBuffer._statistics_methods):
        return getattr(obj, name)
    raise pickle.UnpicklingError(f'weights-only loading refuses getattr({obj!r}, {name!r})')


def allow_mmengine_globals() -> None:
    """Allow-list the few types mmengine checkpoints pickle (idempotent)."""
    global _DONE
    if _DONE or not hasattr(torch.serialization, 'add_safe_globals'):
        return
    torch.serialization.add_safe_globals(_mmengine_safe_types())
    _DONE = True


def safe_torch_load(path: str, map_location='cpu'):
    """``torch.load(path, weights_only=True)`` with a clear error for unsafe content."""
    allow_mmengine_globals()
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f'checkpoint not found: {path}') from None
    except Exception as exc:  # UnpicklingError and friends
        raise ValueError(f'could not load {path} with weights_only=True: {exc}. Only state '
                         f'dicts and mmengine checkpoints are accepted.') from exc
