"""What ``tools/train.py`` and ``tools/test.py`` share: reading a config, checking data and
checkpoint paths before anything heavy starts, machine fall-backs, and reporting a user's
mistake as one clear message (:class:`LaunchError`, exit status 2) instead of a traceback.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys

from ..checkpoint import CheckpointError, load_checkpoint
from ..hub import WeightsUnavailableError

#: scope -> (README that documents the data, section)
DATA_DOCS = {
    'mmpretrain': ('classification/README.md', 'Data layout'),
    'mmdet': ('detection/README.md', 'Data'),
    'mmseg': ('segmentation/README.md', 'Data'),
}
CUSTOM_IMPORTS_LINE = "custom_imports = dict(imports=['enformer_core'], allow_failed_imports=False)"


class LaunchError(RuntimeError):
    """A problem with the user's input (config, data, checkpoint), reported without traceback."""


# ----------------------------------------------------------------------------------- config
def load_config(path: str, cfg_options=None):
    """Read ``path``; check it imports enformer_core and names its toolbox scope."""
    from mmengine.config import Config
    if not osp.isfile(path):
        raise LaunchError(f'config file not found: {path}')
    # Parse without running custom_imports first, so a missing import is reported clearly.
    raw = Config.fromfile(path, import_custom_modules=False)
    imports = (raw.get('custom_imports') or {}).get('imports', [])
    imports = [imports] if isinstance(imports, str) else list(imports)
    if not any(m == 'enformer_core' or m.startswith('enformer_core.') for m in imports):
        raise LaunchError(
            f'{path} does not import enformer_core, so EnFormer and the other backbones are '
            f'not registered in the toolbox. Add this line to the config (or to one of its '
            f'_base_ files):\n    {CUSTOM_IMPORTS_LINE}')
    cfg = Config.fromfile(path)  # now imports enformer_core (registers everything)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope')
    if scope not in DATA_DOCS:
        raise LaunchError(f"{path}: default_scope must be one of {sorted(DATA_DOCS)} "
                          f"(e.g. default_scope = 'mmpretrain'), got {scope!r}")
    return cfg


def set_work_dir(cfg, config_path: str, work_dir=None) -> None:
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def adapt_to_machine(cfg) -> None:
    """CPU-only fall-backs: fp32 instead of AMP; no persistent workers with 0 workers."""
    import torch
    ow = cfg.get('optim_wrapper')
    if ow is not None and ow.get('type') == 'AmpOptimWrapper' and not torch.cuda.is_available():
        print('[train] no CUDA device: AmpOptimWrapper -> OptimWrapper (fp32 on CPU)',
              flush=True)
        ow['type'] = 'OptimWrapper'
        ow.pop('loss_scale', None)
        ow.pop('dtype', None)
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(key)
        if loader and loader.get('num_workers', 0) == 0:
            loader['persistent_workers'] = False
        if loader and not torch.cuda.is_available():
            loader['pin_memory'] = False


# ------------------------------------------------------------------------------------- data
def _datasets(node):
    """Yield every dataset dict in a (possibly wrapped: Repeat/Concat/ClassBalanced) config."""
    if not isinstance(node, dict):
        return
    inner = [node.get('dataset')] + list(node.get('datasets') or [])
    inner = [d for d in inner if isinstance(d, dict)]
    if inner:
        for d in inner:
            yield from _datasets(d)
    else:
        yield node


def check_data_paths(cfg, loaders) -> None:
    """Raise LaunchError naming the first dataset path that does not exist."""
    readme, section = DATA_DOCS[cfg.default_scope]
    for key in loaders:
        loader = cfg.get(key)
        if not loader:
            continue
        for ds in _datasets(loader.get('dataset')):
            root = ds.get('data_root') or ''
            paths = []
            if root:
                paths.append(('data_root', root))
            ann = ds.get('ann_file') or ''
            if isinstance(ann, str) and ann:
                paths.append(('ann_file', ann if osp.isabs(ann) else osp.join(root, ann)))
            prefix = ds.get('data_prefix') or {}
            if isinstance(prefix, str):
                prefix = {'img_path': prefix}
            for name, value in prefix.items():
                if isinstance(value, str) and value and root:
                    paths.append((f'data_prefix.{name}',
                                  value if osp.isabs(value) else osp.join(root, value)))
            for what, path in paths:
                if '://' in path:  # remote storage (petrel, s3): cannot check here
                    continue
                if not osp.exists(path):
                    raise LaunchError(
                        f'dataset path not found: {path} ({key}.dataset.{what}, type '
                        f'{ds.get("type")}; looked at {osp.abspath(path)}). Prepare the data as '
                        f'described in {readme}, section "{section}", or point the config at '
                        f'it with --cfg-options {key}.dataset.data_root=PATH')


# ------------------------------------------------------------------------------ checkpoints
def unwrap_model(model):
    """The model inside a DDP/MMDistributedDataParallel wrapper."""
    return getattr(model, 'module', model)


def load_into(model, path: str, what: str, strict: bool = True, adapt: bool = True,
              check_only: bool = False):
    """:func:`~enformer_core.checkpoint.load_checkpoint` into the runner's model; a checkpoint
    that cannot be read or does not fit is a :class:`LaunchError` with the report."""
    try:
        return load_checkpoint(unwrap_model(model), path, strict=strict, adapt=adapt,
                               check_only=check_only)
    except (CheckpointError, WeightsUnavailableError) as exc:
        raise LaunchError(f'{exc}\n  (model: {what})') from None


def describe_model(cfg) -> str:
    backbone = (cfg.get('model') or {}).get('backbone') or {}
    arch = backbone.get('arch')
    return f'{backbone.get("type", "model")}' + (f" (arch='{arch}')" if arch else '')


def build_runner(cfg):
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def run_main(main) -> None:
    """Run ``main()``; print the errors that explain themselves as one clear message instead
    of a traceback: the user's input (LaunchError, or a checkpoint that cannot be read or does
    not fit, e.g. through ``init_cfg``) exits with status 2; a training stopped by a non-finite
    loss (:class:`~enformer_core.engine.NonFiniteLossError`) or by a collective that timed out
    (``env_cfg.dist_cfg.timeout``: another process hung) with status 1."""
    try:
        main()
    except (LaunchError, CheckpointError, WeightsUnavailableError) as exc:
        print(f'ERROR: {exc}', file=sys.stderr, flush=True)
        sys.exit(2)
    except Exception as exc:
        if type(exc).__name__ == 'NonFiniteLossError':
            print(f'ERROR: {exc}', file=sys.stderr, flush=True)
            sys.exit(1)
        if _is_dist_timeout(exc):
            import traceback
            traceback.print_exc()
            print(f'ERROR: rank {os.environ.get("RANK", "?")}: a collective operation timed out '
                  f'({exc}): another process hung or died. The limit is '
                  f'env_cfg.dist_cfg.timeout (seconds; docs/reliability.md).',
                  file=sys.stderr, flush=True)
            sys.exit(1)
        raise


def _is_dist_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective's timeout (gloo: 'Timed out waiting ...ms')."""
    try:
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()):
            return False
    except ImportError:  # pragma: no cover
        return False
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ('timed out' in text or 'timeout' in text)


#: values of the config option ``non_finite_loss`` (tools/train.py)
NON_FINITE_LOSS_ACTIONS = ('error', 'skip')


def add_non_finite_loss_hook(cfg) -> None:
    """Add ``NonFiniteLossHook`` to ``cfg.custom_hooks`` unless the config has one; its
    action is the config's ``non_finite_loss`` (``'error'``, the default, or ``'skip'``)."""
    action = cfg.get('non_finite_loss', 'error')
    if action not in NON_FINITE_LOSS_ACTIONS:
        raise LaunchError(f'non_finite_loss must be one of {NON_FINITE_LOSS_ACTIONS}, got '
                          f'{action!r}')
    hooks = list(cfg.get('custom_hooks') or [])
    names = [h.get('type') if isinstance(h, dict) else type(h).__name__ for h in hooks]
    if not any(n == 'NonFiniteLossHook' or getattr(n, '__name__', None) == 'NonFiniteLossHook'
               for n in names):
        hooks.append(dict(type='NonFiniteLossHook', action=action))
    cfg.custom_hooks = hooks


def parse_common_args(p: argparse.ArgumentParser, argv, cfg_example: str):
    """Add the options train.py and test.py share (--cfg-options, --launcher, --local-rank),
    parse, and export LOCAL_RANK for launchers that pass it as an argument."""
    from mmengine.config import DictAction
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help=f'override config entries, e.g. {cfg_example}')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args
