"""mmpretrain extras for the classification configs (registered on ``import enformer_core``).

* :class:`FashionMNISTIdx` reads the gzipped (or plain) IDX files of Fashion-MNIST exactly as
  shipped by the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).
  mmpretrain's own ``FashionMNIST`` needs the files un-gzipped next to each other, tries to
  download when they are missing and, with ``split='test'`` but ``test_mode=False``, silently
  loads the *training* files.  Here ``split`` alone decides which files are read.
* :class:`GreyToRGB` replicates a single grey channel to three.
* :class:`ProgressBarHook` draws a one-line progress bar (iterations, loss, img/s, ETA) for
  training and evaluation, for the CPU demo.
* :class:`TimeBudgetHook` sizes an iteration-based run to a wall-clock budget: it times the
  first iterations and moves the end of the run and of its decaying learning-rate schedule so
  that training ends within the budget on whatever machine it runs.
"""
from __future__ import annotations

import gzip
import math
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
        self._start_iter = runner.iter  # > 0 after --resume

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if not runner.rank == 0:
            return
        loss = (outputs or {}).get('loss')
        if loss is not None:
            loss = float(loss.detach()) if hasattr(loss, "detach") else float(loss)
            self._loss = loss if self._loss is None else 0.9 * self._loss + 0.1 * loss
        batch = len(data_batch['inputs']) if data_batch else 1
        if _iter_based(runner):  # one long "epoch": count the run's iterations
            i, total, extra = runner.iter + 1 - self._start_iter, \
                runner.max_iters - self._start_iter, ''
        else:
            i, total = batch_idx + 1, len(runner.train_dataloader)
            extra = f'epoch {runner.epoch + 1}/{runner.max_epochs} '
        if self._loss is not None:
            extra += f'loss {self._loss:.3f} '
        self._draw('train', i, total, self._t, batch, extra)

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


def _iter_based(runner) -> bool:
    from mmengine.runner import IterBasedTrainLoop
    return isinstance(runner.train_loop, IterBasedTrainLoop)


@HOOKS.register_module()
class TimeBudgetHook(Hook):
    """Fit an iteration-based training run into ``minutes`` of wall-clock time.

    The run is configured for at most ``max_iters`` iterations (``IterBasedTrainLoop``).  After
    ``skip_iters`` warm-up iterations the hook times ``calibrate_iters`` more, and then sets the
    end of the run to the last iteration that fits in what is left of the budget (counted from
    ``before_train``), between ``min_iters`` and the configured ``max_iters``.  Every
    parameter scheduler that ended with the run (``end == max_iters``) is moved with it
    (``CosineAnnealing*``: ``T_max``; ``Linear*``/``Poly*``: ``total_iters``), so a decay
    still reaches its final value on the new last iteration; those schedulers must not have
    begun at the first decision (put the warm-up before them, longer than the calibration).

    The first iterations of a run are slower than the rest (allocator and kernel caches warm
    up) and a shared machine drifts, so with ``refine_interval > 0`` the estimate is renewed
    every ``refine_interval`` iterations over everything timed so far, until ``refine_until``
    of the run has passed, and the end is moved again.  mmengine's cosine, linear and poly
    schedulers are chainable (each step multiplies the current value by a ratio), so a moved
    end bends the running decay smoothly onto its final value at the new end, without a jump.

    Under DDP rank 0 decides and broadcasts, so all processes stop together.  The decision is
    stored in the checkpoints (``meta['time_budget']``) and a resumed run keeps it.

    Args:
        minutes: wall-clock budget of the training loop (start of training to last iteration).
        skip_iters: first iterations not timed (allocator and cache warm-up).
        calibrate_iters: iterations timed before the first decision.
        min_iters: never end before this iteration (a warning says the budget will be missed).
        refine_interval: renew the decision every this many iterations (0: decide once).
        refine_until: last fraction of the run at which the decision may still move.
    """

    priority = 'VERY_HIGH'
    _MOVABLE = ('CosineAnnealing', 'Linear', 'Poly', 'Constant')

    def __init__(self, minutes: float, skip_iters: int = 5, calibrate_iters: int = 20,
                 min_iters: int = 0, refine_interval: int = 0, refine_until: float = 0.8):
        if minutes <= 0:
            raise ValueError(f'TimeBudgetHook needs a positive budget, got {minutes} minutes')
        if skip_iters < 0 or calibrate_iters < 1:
            raise ValueError('TimeBudgetHook needs skip_iters >= 0 and calibrate_iters >= 1')
        if refine_interval < 0 or not 0.0 <= refine_until <= 1.0:
            raise ValueError('TimeBudgetHook needs refine_interval >= 0 and 0 <= refine_until <= 1')
        self.budget_s = 60.0 * minutes
        self.skip_iters = skip_iters
        self.calibrate_iters = calibrate_iters
        self.min_iters = min_iters
        self.refine_interval = refine_interval
        self.refine_until = refine_until
        self.decided: Optional[dict] = None

    def before_train(self, runner):
        if not _iter_based(runner):
            raise ValueError('TimeBudgetHook needs an iteration-based run: train_cfg = '
                             "dict(type='IterBasedTrainLoop', max_iters=...)")
        self._t0 = time.time()
        self._configured_max = runner.max_iters
        self._start_iter = runner.iter
        self._calib_start = None
        self._resumed = self.decided is not None
        if self._resumed:  # keep the earlier decision; its timing is gone, so no refinement
            runner.train_loop._max_iters = self.decided['max_iters']

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if not self._resumed and runner.iter == self._start_iter + self.skip_iters:
            self._calib_start = time.time()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if self._resumed or self._calib_start is None:
            return
        timed = runner.iter + 1 - (self._start_iter + self.skip_iters)
        if self.decided is None:
            if timed < self.calibrate_iters:
                return
        elif (self.refine_interval == 0 or (timed - self.calibrate_iters) % self.refine_interval
              or runner.iter + 1 > self.refine_until * runner.max_iters):
            return
        self._decide(runner, timed, data_batch)

    def _decide(self, runner, timed: int, data_batch) -> None:
        import torch
        from mmengine.dist import broadcast
        now = time.time()
        per_iter = (now - self._calib_start) / timed
        left = self.budget_s - (now - self._t0)
        fit = runner.iter + 1 + max(0, math.floor(left / per_iter))
        new_max = int(min(self._configured_max, max(self.min_iters, fit, runner.iter + 2)))
        decision = torch.tensor([new_max, per_iter], dtype=torch.float64)
        broadcast(decision, 0)  # no-op without distributed training
        new_max, per_iter = int(decision[0]), float(decision[1])
        first = self.decided is None
        old_max = runner.max_iters
        self._apply(runner, new_max, first)
        self.decided = dict(max_iters=new_max, seconds_per_iter=per_iter,
                            budget_minutes=self.budget_s / 60)
        if not first and abs(new_max - old_max) <= 0.005 * old_max:
            return  # no news worth a log line
        batch = len(data_batch['inputs']) if data_batch else 0
        msg = (f'time budget {self.budget_s / 60:.1f} min: {per_iter:.3f} s per iteration over '
               f'{timed} iterations -> {new_max} iterations '
               + (f'(configured at most {self._configured_max}' if first else
                  f'(was {old_max}') + f'; about {new_max * batch * runner.world_size} images)')
        if fit < new_max and self.min_iters >= new_max:
            msg += f'; WARNING: min_iters={self.min_iters} will overrun the budget'
        runner.logger.info(msg)

    def _apply(self, runner, new_max: int, first: bool) -> None:
        old = runner.train_loop._max_iters
        runner.train_loop._max_iters = new_max
        schedulers = runner.param_schedulers or []
        if isinstance(schedulers, dict):
            schedulers = [s for group in schedulers.values() for s in group]
        for sched in schedulers:
            if sched.by_epoch or sched.end != old:
                continue
            name = type(sched).__name__
            started = sched.begin <= runner.iter + 1
            if started and (first or not name.startswith(self._MOVABLE)) \
                    and not name.startswith('Constant'):
                raise RuntimeError(
                    f'TimeBudgetHook cannot move {name} (begin={sched.begin}): it has already '
                    f'started; begin it after iteration {self.skip_iters + self.calibrate_iters} '
                    f'(e.g. after the warm-up)')
            sched.end = new_max
            if hasattr(sched, 'T_max'):
                sched.T_max = new_max - sched.begin
            if hasattr(sched, 'total_iters'):
                sched.total_iters = new_max - sched.begin - 1

    def before_save_checkpoint(self, runner, checkpoint):
        if self.decided is not None:
            checkpoint.setdefault('meta', {})['time_budget'] = dict(self.decided)

    def after_load_checkpoint(self, runner, checkpoint):
        decided = checkpoint.get('meta', {}).get('time_budget')
        if decided is not None:
            self.decided = dict(decided)


__all__ = ['FashionMNISTIdx', 'GreyToRGB', 'ProgressBarHook', 'TimeBudgetHook', 'read_idx',
           'write_idx']
