#!/usr/bin/env python
"""Print the versions of the stack and whether each task of the project can run.

    python tools/check_env.py          # full report
    python tools/check_env.py --brief  # one line per task (used at the end of set-up)
"""
from __future__ import annotations

import argparse
import importlib
import platform
import sys


def _version(name: str):
    try:
        mod = importlib.import_module(name)
        return getattr(mod, '__version__', 'unknown'), None
    except Exception as exc:  # noqa: BLE001 - we report whatever stops the import
        return None, f'{type(exc).__name__}: {exc}'


def mmcv_ops_status():
    try:
        from mmcv.ops import batched_nms  # noqa: F401
        import mmcv._ext  # noqa: F401
        return True, 'compiled ops available'
    except Exception as exc:  # noqa: BLE001
        return False, f'{type(exc).__name__}: {exc}'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--brief', action='store_true')
    args = parser.parse_args()

    versions = {n: _version(n) for n in ('torch', 'torchvision', 'mmengine', 'mmcv',
                                         'mmpretrain', 'mmdet', 'mmseg', 'torch_scatter',
                                         'enformer_core')}
    ops_ok, ops_msg = mmcv_ops_status()
    import torch
    cuda = torch.cuda.is_available()

    verdicts = {}
    core_ok = versions['enformer_core'][0] is not None
    for task, pkg, needs_ops in (('classification', 'mmpretrain', False),
                                 ('detection', 'mmdet', True),
                                 ('segmentation', 'mmseg', True)):
        ver, err = versions[pkg]
        if not core_ok:
            verdicts[task] = (False, f'enformer_core does not import: {versions["enformer_core"][1]}')
        elif ver is None:
            verdicts[task] = (False, f'{pkg} does not import: {err}')
        elif needs_ops and not ops_ok:
            verdicts[task] = (False, f'{pkg} needs mmcv with compiled ops ({ops_msg}); '
                                     f'run bash tools/setup_env.sh')
        else:
            # the toolbox's registry finds EnFormer in its parent, MMEngine's root registry
            models = importlib.import_module(f'{pkg}.registry').MODELS
            if models.get('EnFormer') is None:
                verdicts[task] = (False, f'EnFormer is not visible in the {pkg} registry')
            else:
                verdicts[task] = (True, f'{pkg} {ver}, EnFormer registered')

    if not args.brief:
        print(f'Python      {sys.version.split()[0]} ({platform.machine()}, {platform.system()})')
        for name, (ver, err) in versions.items():
            print(f'{name:<14}{ver if ver else "MISSING (" + err + ")"}')
        print(f'mmcv ops    {"yes" if ops_ok else "no"} ({ops_msg})')
        from enformer_core.datasets import UNAVAILABLE
        from enformer_core.ops.clustering import HAS_TORCH_SCATTER
        print(f'torch-scatter accelerator: {"yes" if HAS_TORCH_SCATTER else "no (pure PyTorch fallback)"}')
        for module, why in UNAVAILABLE.items():
            print(f'enformer_core.datasets.{module} unavailable: {why}')
        print(f'CUDA        {"yes, " + torch.cuda.get_device_name(0) if cuda else "no (CPU only)"}'
              f'; threads {torch.get_num_threads()}')
        print()
    for task, (ok, why) in verdicts.items():
        print(f'{task:<15}{"usable" if ok else "NOT usable"}: {why}')
    return 0 if all(ok for ok, _ in verdicts.values()) else 1


if __name__ == '__main__':
    sys.exit(main())
