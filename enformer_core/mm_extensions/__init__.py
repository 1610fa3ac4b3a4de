"""Registered OpenMMLab extras (transforms, hooks) used by the task configs.

Each submodule registers into one toolbox and is skipped when that toolbox is missing.
"""
import importlib

for _name in ('det', 'seg', 'cls'):
    try:
        importlib.import_module(f'{__name__}.{_name}')
    except ImportError as _exc:  # toolbox not installed: tools/check_env.py reports it
        if not any(t in str(_exc) for t in ('mmdet', 'mmseg', 'mmpretrain', 'mmcv', f'.{_name}')):
            raise
