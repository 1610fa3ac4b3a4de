"""mmpretrain extras for the classification configs (registered on ``import enformer_core``).

* :class:`FashionMNISTIdx` reads the gzipped (or plain) IDX files of Fashion-MNIST exactly as
  shipped by the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).
  mmpretrain's own ``FashionMNIST`` needs the files un-gzipped next to each other, tries to
  download when they are missing and, with ``split='test'`` but ``test_mode=False``, silently
  loads the *training* files.  Here ``split`` alone decides which files are read.
* :class:`GreyToRGB` replicates a single grey channel to three.
* :class:`ProgressBarHook` draws a one-line progress bar (iterations, loss, img/s, ETA) for
  training and evaluation, for the CPU demo.
"""
from __future__ import annotations

import gzip
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np
from mmengine.hooks import Hook
from mmpretrain.datasets import BaseDataset
from mmpretrain.datasets.categories import FASHIONMNIST_CATEGORITES
from mmpretrain.registry import DATASETS, HOOKS, TRANSFORMS

try:
    from mmcv.transforms import BaseTransform
except Exception:  # pragma: no cover - mmcv is a hard dependency of mmpretrain
    BaseTransform = object

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4',
               0x0E: '>f8'}


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain) into a numpy array (LeCun's MNIST format)."""
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f'{path} is not an IDX file (bad magic number {data[:4]!r})')
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim)]
    arr = np.frombuffer(data, dtype=_IDX_DTYPES[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f'{path}: header says {dims} but holds {arr.size} values')
    return arr.reshape(dims)


def write_idx(path: str, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (used by tests to make tiny slices)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b''.join(
        int(d).to_bytes(4, 'big') for d in array.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + array.tobytes())


@DATASETS.register_module()
class FashionMNISTIdx(BaseDataset):
    """Fashion-MNIST from its IDX files; ``split`` ('train' | 'test') picks the files.

    Args:
        data_root: folder holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.
        split: ``'train'`` (60 000 images) or ``'test'`` (10 000 images).
        num_samples: images per epoch. Fewer than the split: a fixed random subset drawn
            with ``seed``. More: the whole split, repeated, plus a fixed random subset for the
            remainder (``70000`` = the 60k training images + 10k of them again), so a run can
            be sized in images rather than whole epochs. ``None`` keeps the split as it is.
        seed: seed of the subset.
    """

    METAINFO = {'classes': FASHIONMNIST_CATEGORITES}
    FILES = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
             'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}

    def __init__(self, data_root: str = '/usr/share/datasets/fashion-mnist',
                 split: str = 'train', num_samples: Optional[int] = None, seed: int = 0,
                 **kwargs):
        if split not in self.FILES:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.split = split
        self.num_samples = num_samples
        self.seed = seed
        kwargs.setdefault('test_mode', split == 'test')
        super().__init__(ann_file='', data_root=data_root, **kwargs)

    def _find(self, stem: str) -> str:
        for name in (stem + '.gz', stem):
            path = os.path.join(self.data_root, name)
            if os.path.isfile(path):
                return path
        raise FileNotFoundError(
            f'Fashion-MNIST file {stem}[.gz] not found in {self.data_root!r}. Install the Debian '
            f'package (apt-get install dataset-fashion-mnist, files under '
            f'/usr/share/datasets/fashion-mnist/) or set data_root; see classification/README.md, '
            f'section "Demo: Fashion-MNIST".')

    def load_data_list(self):
        if not os.path.isdir(self.data_root):
            self._find(self.FILES[self.split][0])  # raises the explanatory error
        img_file, label_file = (self._find(s) for s in self.FILES[self.split])
        imgs = read_idx(img_file)
        labels = read_idx(label_file).astype(np.int64)
        if imgs.ndim != 3 or len(imgs) != len(labels):
            raise ValueError(f'{img_file}: expected (N, H, W) images matching {len(labels)} '
                             f'labels, got {imgs.shape}')
        index = np.arange(len(labels))
        if self.num_samples is not None:
            if self.num_samples < 1:
                raise ValueError(f'num_samples must be a positive number of images, got '
                                 f'{self.num_samples}')
            repeats, rest = divmod(self.num_samples, len(labels))
            subset = np.sort(np.random.default_rng(self.seed).permutation(len(labels))[:rest])
            index = np.concatenate([np.tile(index, repeats), subset])
        return [dict(img=imgs[i], gt_label=int(labels[i])) for i in index]


@TRANSFORMS.register_module()
class GreyToRGB(BaseTransform):
    """Replicate a grey ``(H, W)`` or ``(H, W, 1)`` image to ``(H, W, 3)``."""

    def transform(self, results: dict) -> dict:
        img = results['img']
        if img.ndim == 2:
            img = img[..., None]
        if img.shape[-1] == 1:
            img = np.ascontiguousarray(np.repeat(img, 3, axis=-1))
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        return results


@HOOKS.register_module()
class ProgressBarHook(Hook):
    """A one-line progress bar per epoch / evaluation: ``[####....] it/total loss img/s ETA``.

    Redrawn in place on a terminal, printed every ``interval`` iterations otherwise (logs).
    """

    priority = 'VERY_LOW'

    def __init__(self, interval: int = 20, width: int = 30):
        self.interval = interval
        self.width = width
        self._tty = sys.stdout.isatty()

    def _draw(self, tag, i, total, start, batch, extra='', end=False):
        if not end and not (i == 1 or i % self.interval == 0 or i == total):
            return
        elapsed = time.time() - start
        done = int(self.width * i / max(total, 1))
        rate = i * batch / max(elapsed, 1e-9)
        eta = elapsed / max(i, 1) * (total - i)
        line = (f'{tag} [{"#" * done}{"." * (self.width - done)}] {i}/{total} {extra}'
                f'{rate:.1f} img/s elapsed {elapsed / 60:.1f} min ETA {eta / 60:.1f} min')
        if self._tty:
            sys.stdout.write('\r' + line + ('\n' if i == total else ''))
        else:
            sys.stdout.write(line + '\n')
        sys.stdout.flush()

    def before_train_epoch(self, runner):
        self._t = time.time()
        self._loss = None

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if not runner.rank == 0:
            return
        loss = (outputs or {}).get('loss')
        if loss is not None:
            loss = float(loss.detach()) if hasattr(loss, "detach") else float(loss)
            self._loss = loss if self._loss is None else 0.9 * self._loss + 0.1 * loss
        total = len(runner.train_dataloader)
        batch = len(data_batch['inputs']) if data_batch else 1
        extra = f'epoch {runner.epoch + 1}/{runner.max_epochs} '
        if self._loss is not None:
            extra += f'loss {self._loss:.3f} '
        self._draw('train', batch_idx + 1, total, self._t, batch, extra)

    def _before_eval(self, runner):
        self._te = time.time()

    def _after_eval_iter(self, runner, batch_idx, data_batch, loader, tag):
        if runner.rank == 0:
            batch = len(data_batch['inputs']) if data_batch else 1
            self._draw(tag, batch_idx + 1, len(loader), self._te, batch)

    def before_val_epoch(self, runner):
        self._before_eval(runner)

    def before_test_epoch(self, runner):
        self._before_eval(runner)

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._after_eval_iter(runner, batch_idx, data_batch, runner.val_dataloader, 'val')

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._after_eval_iter(runner, batch_idx, data_batch, runner.test_dataloader, 'test')


__all__ = ['FashionMNISTIdx', 'GreyToRGB', 'ProgressBarHook', 'read_idx', 'write_idx']
