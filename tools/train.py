#!/usr/bin/env python
"""Train any EnFormer config (classification, detection or segmentation) with MMEngine.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
                          [--cfg-options k=v ...] [--launcher none|pytorch|slurm]

The toolbox (mmpretrain / mmdet / mmseg) is taken from the config's ``default_scope``.
Multi-process runs go through ``tools/dist_train.sh`` (torchrun) or ``tools/slurm_train.sh``;
without CUDA they run on CPU with the gloo backend.  The helpers below are shared with
``tools/test.py``.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:  # make ``import enformer_core`` work from any directory
    sys.path.insert(0, ROOT)

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
def check_checkpoint_fits(model, path: str, what: str = 'model') -> None:
    """Raise LaunchError if the checkpoint's keys or shapes differ from ``model``'s."""
    from enformer_core.models.checkpoint import CheckpointError, load_state_dict_file
    if not osp.isfile(path):
        raise LaunchError(f'checkpoint not found: {path}')
    try:
        state = load_state_dict_file(path)
    except (CheckpointError, ValueError) as exc:
        raise LaunchError(str(exc)) from None
    model = getattr(model, 'module', model)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f'{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}'
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def few(items):
            return ', '.join(items[:5]) + (f' ... (+{len(items) - 5})' if len(items) > 5 else '')
        lines = [f'checkpoint {path} does not fit the {what} (a checkpoint of another variant, '
                 f'task or number of classes?):']
        if shapes:
            lines.append(f'  {len(shapes)} shape mismatches: {few(shapes)}')
        if missing:
            lines.append(f'  {len(missing)} keys missing from the checkpoint: {few(missing)}')
        if unexpected:
            lines.append(f'  {len(unexpected)} unexpected keys in the checkpoint: '
                         f'{few(unexpected)}')
        raise LaunchError('\n'.join(lines))


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
    """Run ``main()``; print LaunchErrors as one clear message and exit with status 2."""
    try:
        main()
    except LaunchError as exc:
        print(f'ERROR: {exc}', file=sys.stderr, flush=True)
        sys.exit(2)


# ------------------------------------------------------------------------------------ train
def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Train an EnFormer config with MMEngine')
    p.add_argument('config', help='config file')
    p.add_argument('--work-dir', help='where logs and checkpoints go '
                   '(default ./work_dirs/<config name>)')
    p.add_argument('--resume', nargs='?', const='auto', default=None, metavar='CKPT',
                   help='resume from CKPT, or from the latest checkpoint of the work dir '
                        'when no CKPT is given')
    p.add_argument('--amp', action='store_true', help='mixed precision (AmpOptimWrapper)')
    p.add_argument('--auto-scale-lr', action='store_true',
                   help='scale the lr by (total batch) / auto_scale_lr.base_batch_size')
    return parse_common_args(p, argv, 'train_cfg.max_epochs=1')


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


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    set_work_dir(cfg, args.config, args.work_dir)
    cfg.launcher = args.launcher
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise LaunchError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    adapt_to_machine(cfg)
    loaders = ['train_dataloader']
    if cfg.get('val_cfg') is not None and cfg.get('val_dataloader'):
        loaders.append('val_dataloader')
    check_data_paths(cfg, loaders)

    from enformer_core.utils.dist import prepare_distributed
    prepare_distributed(cfg, args.launcher)
    runner = build_runner(cfg)
    if cfg.get('resume'):
        ckpt = cfg.get('load_from')
        if ckpt is None:
            from mmengine.runner import find_latest_checkpoint
            ckpt = find_latest_checkpoint(cfg.work_dir)
        if ckpt is not None:
            check_checkpoint_fits(runner.model, ckpt, describe_model(cfg))
            print(f'[train] resuming from {ckpt}', flush=True)
        else:
            print(f'[train] --resume: no checkpoint in {cfg.work_dir}, starting from scratch',
                  flush=True)
    runner.train()
    return runner


if __name__ == '__main__':
    run_main(main)
