"""Distributed launching that also works on machines without a GPU.

mmengine's ``init_dist('pytorch')`` calls ``torch.cuda.set_device`` and its Runner wraps the
model with ``device_ids=[LOCAL_RANK]``; both fail on a CPU-only machine.  When CUDA is absent,
:func:`prepare_distributed` initialises the gloo process group itself (the Runner then skips
``init_dist``) and wraps the model without device ids, so ``tools/dist_train.sh CONFIG 2``
runs on CPU exactly as it would on GPUs.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def prepare_distributed(cfg, launcher: str) -> None:
    """Adjust ``cfg`` (an mmengine Config) for ``launcher``; no-op with CUDA or 'none'."""
    if launcher == 'none' or torch.cuda.is_available():
        return
    if launcher == 'slurm':  # map SLURM's variables onto torchrun's
        os.environ.setdefault('RANK', os.environ.get('SLURM_PROCID', '0'))
        os.environ.setdefault('WORLD_SIZE', os.environ.get('SLURM_NTASKS', '1'))
        os.environ.setdefault('LOCAL_RANK', os.environ.get('SLURM_LOCALID', '0'))
        os.environ.setdefault('MASTER_PORT', '29500')
        if 'MASTER_ADDR' not in os.environ:
            nodes = os.environ.get('SLURM_NODELIST', '127.0.0.1')
            os.environ['MASTER_ADDR'] = nodes.split(',')[0].split('[')[0]
    missing = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
               if k not in os.environ]
    if missing:
        raise RuntimeError(f'--launcher {launcher} needs the environment variables {missing}; '
                           f'start it through tools/dist_train.sh (torchrun) or srun')
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    # torch's SyncBatchNorm only runs on GPUs: plain BN per process on CPU
    if 'model' in cfg:
        _sync_bn_to_bn(cfg.model)
    cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None,
                                 broadcast_buffers=False)
    env_cfg = cfg.get('env_cfg', None) or {}
    env_cfg['dist_cfg'] = dict(backend='gloo')
    cfg.env_cfg = env_cfg


def _sync_bn_to_bn(node) -> None:
    """Replace every ``norm_cfg=dict(type='SyncBN')`` in a model config by plain BN."""
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
        for value in node.values():
            _sync_bn_to_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _sync_bn_to_bn(value)
