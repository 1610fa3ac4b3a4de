"""Distributed launching that also works on machines without a GPU.

mmengine's ``init_dist('pytorch')`` calls ``torch.cuda.set_device`` and its Runner wraps the
model with ``device_ids=[LOCAL_RANK]``; both fail on a CPU-only machine.  When CUDA is absent,
:func:`prepare_distributed` initialises the gloo process group itself (the Runner then skips
``init_dist``) and wraps the model without device ids, so ``tools/dist_train.sh CONFIG 2``
runs on CPU exactly as it would on GPUs.

What the config asks for is kept: ``env_cfg.dist_cfg.timeout`` (seconds; how long a
collective waits for a process that hangs before the job fails, torch's default is 30 min)
goes to ``init_process_group``, and ``find_unused_parameters`` / ``model_wrapper_cfg`` reach
the DDP wrapper.  With CUDA nothing is changed: mmengine does what the config says.
"""
from __future__ import annotations

import datetime
import os
import re

import torch
import torch.distributed as dist


def first_slurm_host(nodelist: str) -> str:
    """The first host of a Slurm host list: ``'node[03-05,9],gpu1'`` -> ``'node03'``."""
    m = re.match(r'\s*([^,\[]+)(?:\[([^\]]*)\])?', nodelist or '')
    if not m:
        return '127.0.0.1'
    prefix, ranges = m.group(1).strip(), m.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(',')[0].split('-')[0].strip()


def dist_timeout(cfg):
    """``env_cfg.dist_cfg.timeout`` as a timedelta (None when the config sets none)."""
    dist_cfg = ((cfg.get('env_cfg', None) or {}).get('dist_cfg', None) or {})
    timeout = dist_cfg.get('timeout', None)
    if timeout is None:
        return None
    if isinstance(timeout, datetime.timedelta):
        return timeout
    try:
        seconds = float(timeout)
    except (TypeError, ValueError):
        raise ValueError(f'env_cfg.dist_cfg.timeout must be a number of seconds, got '
                         f'{timeout!r}') from None
    if seconds <= 0:
        raise ValueError(f'env_cfg.dist_cfg.timeout must be positive, got {timeout!r}')
    return datetime.timedelta(seconds=seconds)


def prepare_distributed(cfg, launcher: str) -> None:
    """Adjust ``cfg`` (an mmengine Config) for ``launcher``; no-op with CUDA or 'none'."""
    if launcher == 'none' or torch.cuda.is_available():
        return
    if launcher == 'slurm':  # map SLURM's variables onto torchrun's
        os.environ.setdefault('RANK', os.environ.get('SLURM_PROCID', '0'))
        os.environ.setdefault('WORLD_SIZE', os.environ.get('SLURM_NTASKS', '1'))
        if 'SLURM_LOCALID' in os.environ:  # (train.py's --local-rank default set '0')
            os.environ['LOCAL_RANK'] = os.environ['SLURM_LOCALID']
        os.environ.setdefault('LOCAL_RANK', '0')
        os.environ.setdefault('MASTER_PORT', '29500')
        if 'MASTER_ADDR' not in os.environ:
            os.environ['MASTER_ADDR'] = first_slurm_host(
                os.environ.get('SLURM_STEP_NODELIST') or os.environ.get('SLURM_NODELIST')
                or '127.0.0.1')
    missing = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
               if k not in os.environ]
    if missing:
        raise RuntimeError(f'--launcher {launcher} needs the environment variables {missing}; '
                           f'start it through tools/dist_train.sh (torchrun) or srun')
    timeout = dist_timeout(cfg)
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo',
                                **({} if timeout is None else dict(timeout=timeout)))
    # torch's SyncBatchNorm only runs on GPUs: plain BN per process on CPU
    if 'model' in cfg:
        _sync_bn_to_bn(cfg.model)
    # the config's wrapper options (find_unused_parameters: FEC's conv_f never gets a
    # gradient) stay; only the device ids go (none on CPU)
    wrapper = dict(cfg.get('model_wrapper_cfg', None) or {})
    wrapper.setdefault('type', 'MMDistributedDataParallel')
    if wrapper['type'] in ('MMDistributedDataParallel', 'DistributedDataParallel'):
        wrapper['device_ids'] = None
        wrapper.setdefault('broadcast_buffers', False)
        wrapper.setdefault('find_unused_parameters',
                           bool(cfg.get('find_unused_parameters', False)))
    cfg.model_wrapper_cfg = wrapper
    env_cfg = cfg.get('env_cfg', None) or {}
    env_cfg['dist_cfg'] = dict(backend='gloo', **(
        {} if timeout is None else dict(timeout=timeout.total_seconds())))
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
