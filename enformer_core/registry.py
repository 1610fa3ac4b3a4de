"""The registries the package's classes are registered in.

Classes register with the usual decorator into MMEngine's *root* registries
(``mmengine.registry.MODELS``, ``DATASETS``, ``TRANSFORMS``, ``HOOKS``).  Every OpenMMLab
toolbox's registry has the root as its parent and looks a name up there when it does not hold
it itself, so one registration serves mmpretrain, mmdet and mmseg configs alike::

    custom_imports = dict(imports=['enformer_core'], allow_failed_imports=False)
    model = dict(backbone=dict(type='EnFormer', ...))          # any of the three toolboxes
    custom_hooks = [dict(type='TimeBudgetHook', minutes=10)]   # idem

Without MMEngine (the backbone-only install, ``pip install .``) the decorators leave the class
as it is, so the models still import and build in plain PyTorch.
"""
from __future__ import annotations

from typing import Dict, List

try:
    from mmengine.registry import DATASETS, HOOKS, MODELS, TRANSFORMS
    HAS_MMENGINE = True
except ImportError:  # backbone-only install
    HAS_MMENGINE = False

    class _NoRegistry:
        """Stand-in for an MMEngine registry: ``register_module`` returns the class as is."""

        def __init__(self, name: str):
            self.name = name
            self.module_dict: Dict[str, type] = {}

        def register_module(self, name=None, force=False, module=None):
            def register(cls):
                self.module_dict[name or cls.__name__] = cls
                return cls
            return register(module) if module is not None else register

        def get(self, key: str):
            return self.module_dict.get(key)

        def build(self, cfg, *args, **kwargs):
            raise ImportError(f'building {cfg.get("type")!r} from a config needs MMEngine: '
                              f"pip install 'enformer_core[mm]'")

    MODELS = _NoRegistry('model')
    DATASETS = _NoRegistry('dataset')
    TRANSFORMS = _NoRegistry('transform')
    HOOKS = _NoRegistry('hook')


def registered() -> Dict[str, List[str]]:
    """Names this package registered, per registry (for ``tools/check_env.py`` and tests)."""
    out: Dict[str, List[str]] = {}
    for registry in (MODELS, DATASETS, TRANSFORMS, HOOKS):
        names = [name for name, cls in registry.module_dict.items()
                 if cls.__module__.startswith('enformer_core.')]
        if names:
            out[registry.name] = sorted(names)
    return out
