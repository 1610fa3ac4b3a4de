"""Register the package's modules into the MMEngine registries of every installed toolbox.

Importing :mod:`enformer_core` calls :func:`register_all`, so an mmpretrain, mmdet or mmseg
config needs only ``custom_imports=dict(imports=['enformer_core'], allow_failed_imports=False)``
and ``backbone=dict(type='EnFormer', ...)``.  The classes are defined once and registered
under the same name in each toolbox's ``MODELS`` (and in MMEngine's root registry, which
every toolbox falls back to).
"""
from __future__ import annotations

import importlib
from typing import Dict, List

#: toolbox scope -> module holding its ``MODELS`` registry
TOOLBOXES = {'mmengine': 'mmengine.registry', 'mmpretrain': 'mmpretrain.registry',
             'mmdet': 'mmdet.registry', 'mmseg': 'mmseg.registry'}

#: what each scope got (filled by register_all; read by tools/check_env.py and tests)
REGISTERED: Dict[str, List[str]] = {}


def backbone_classes() -> list:
    from .models import EnFormer
    classes = [EnFormer]
    try:
        from .models import baselines  # noqa: F401  (added by the baselines module)
        classes += list(baselines.BACKBONES)
    except ImportError:
        pass
    return classes


def register_all() -> Dict[str, List[str]]:
    classes = backbone_classes()
    for scope, module in TOOLBOXES.items():
        try:
            registry = importlib.import_module(module).MODELS
        except Exception:  # toolbox not installed (or broken): skip, check_env says why
            continue
        names = []
        for cls in classes:
            if registry.get(cls.__name__) is not cls or cls.__name__ not in registry.module_dict:
                registry.register_module(module=cls, name=cls.__name__, force=True)
            names.append(cls.__name__)
        REGISTERED[scope] = names
    # extra registrations (transforms etc.) provided by the task glue modules
    try:
        from . import mm_extensions  # noqa: F401
    except ImportError:
        pass
    return REGISTERED
