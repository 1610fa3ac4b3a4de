"""Helpers of the reliability tests (``tests/test_reliability_*.py``, docs/reliability.md).

Imported by the tests (``tests/assets`` on ``sys.path``) and by the configs they write
(``custom_imports``), so the training processes started through torchrun / the stand-in
``srun`` register the same test-only transform and hook:

* ``PoisonPixels``: float images, with a NaN pixel in the samples ``sample_idx``;
* ``StopRankHook``: the process of ``rank`` stops itself (SIGSTOP) before iteration
  ``at_iter``, as a hung process would;
* :func:`make_tiny`: a 16-image Fashion-MNIST slice and tiny 32-px configs on it.
"""
import gzip
import os
import signal
from pathlib import Path

import numpy as np
from mmcv.transforms import BaseTransform
from mmengine.hooks import Hook
from mmengine.registry import HOOKS, TRANSFORMS

ROOT = Path(__file__).resolve().parents[2]
ASSETS = Path(__file__).resolve().parent
DEMO = ROOT / 'classification/configs/demo/enformer-s_fashion-mnist-64px.py'
FMNIST = Path('/usr/share/datasets/fashion-mnist')


@TRANSFORMS.register_module(force=True)
class PoisonPixels(BaseTransform):
    """Every image to float32; one NaN pixel in the samples whose index is in ``sample_idx``."""

    def __init__(self, sample_idx=()):
        self.sample_idx = set(int(i) for i in sample_idx)

    def transform(self, results):
        img = results['img'].astype(np.float32)
        if int(results.get('sample_idx', -1)) in self.sample_idx:
            img = img.copy()
            img.flat[0] = np.nan
        results['img'] = img
        return results


@HOOKS.register_module(force=True)
class StopRankHook(Hook):
    """SIGSTOP this process (if its rank is ``rank``) before 1-based iteration ``at_iter``."""

    def __init__(self, rank=1, at_iter=3):
        self.rank = rank
        self.at_iter = at_iter

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.rank == self.rank and runner.iter + 1 == self.at_iter:
            # (print: mmengine's logger is quiet on ranks > 0)
            print(f'StopRankHook: rank {self.rank} stops itself (SIGSTOP)', flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)


def fashion_mnist_slice(stem, n, offset):
    """First n records of a real Fashion-MNIST IDX file (reads only what it needs)."""
    item = 784 if 'images' in stem else 1
    with gzip.open(FMNIST / f'{stem}.gz') as f:
        data = f.read(offset + n * item)[offset:]
    arr = np.frombuffer(data, np.uint8)
    return arr.reshape(n, 28, 28) if item == 784 else arr


SMALL_ARCH = """model = dict(backbone=dict(arch=dict(_delete_=True, embed_dims=[16, 16, 32, 32],
                                     depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], head_dim=16,
                                     ffn_kernel_sizes=[3, 3, 3, 3])),
             head=dict(in_channels=32))
"""


def make_tiny(root: Path, n_train: int = 16) -> dict:
    """A Fashion-MNIST slice (``n_train`` training, 16 test images) and configs on it:

    * ``s``: the demo's EnFormer-S at 32 px, iteration-based (4 iterations of 4 images),
      no shuffling (iteration i sees samples 4(i-1) .. 4i-1), a checkpoint every iteration;
    * ``small``: the same with a 4-block EnFormer (the launcher and DDP tests);
    * ``poisoned``: ``small`` whose sample 6 (iteration 2) holds a NaN pixel.
    """
    from enformer_core.datasets import write_idx
    root = Path(root)
    data = root / 'fmnist'
    data.mkdir(parents=True, exist_ok=True)
    for split, n in (('train', n_train), ('t10k', 16)):
        write_idx(str(data / f'{split}-images-idx3-ubyte.gz'),
                  fashion_mnist_slice(f'{split}-images-idx3-ubyte', n, 16))
        write_idx(str(data / f'{split}-labels-idx1-ubyte.gz'),
                  fashion_mnist_slice(f'{split}-labels-idx1-ubyte', n, 8))
    s = root / 'tiny_s.py'
    s.write_text(f"""
_base_ = ['{DEMO}']
custom_imports = dict(imports=['enformer_core', 'reliability_helpers'],
                      allow_failed_imports=False)
pipe = [dict(type='Resize', scale=(32, 32)), dict(type='GreyToRGB'), dict(type='PackInputs')]
train_dataloader = dict(batch_size=4, sampler=dict(type='DefaultSampler', shuffle=False),
                        dataset=dict(data_root='{data}', pipeline=pipe))
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=4)
test_dataloader = dict(batch_size=16, dataset=dict(data_root='{data}', pipeline=pipe))
param_scheduler = [dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=2)]
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(by_epoch=False, interval=1, max_keep_ckpts=10,
                                     save_last=True))
custom_hooks = []
randomness = dict(seed=0, deterministic=False)
""")
    small = root / 'tiny_small.py'
    small.write_text(f"_base_ = ['{s}']\n" + SMALL_ARCH)
    poisoned = root / 'tiny_poisoned.py'
    poisoned.write_text(f"""
_base_ = ['{small}']
pipe = [dict(type='Resize', scale=(32, 32)), dict(type='PoisonPixels', sample_idx=[6]),
        dict(type='GreyToRGB'), dict(type='PackInputs')]
train_dataloader = dict(dataset=dict(pipeline=pipe))
""")
    return dict(root=root, data=data, s=str(s), small=str(small), poisoned=str(poisoned))


LAUNCH_VARIABLES = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'GROUP_RANK',
                    'MASTER_ADDR', 'MASTER_PORT', 'NNODES', 'NODE_RANK', 'PORT', 'GPUS',
                    'GPUS_PER_NODE')


def subprocess_env(**extra) -> dict:
    """The environment of a training subprocess: one thread, the repository and these
    helpers importable, no GPU."""
    env = {k: v for k, v in os.environ.items()  # no launcher variables of the test process
           if k not in LAUNCH_VARIABLES and not k.startswith(('SLURM_', 'TORCHELASTIC_'))}
    env.update(OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT), str(ASSETS), env.get('PYTHONPATH', '')])
    env.update({k: str(v) for k, v in extra.items()})
    return env


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]
