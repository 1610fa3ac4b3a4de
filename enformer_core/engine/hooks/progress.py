"""A one-line progress bar for training and evaluation (logs and terminals alike)."""
from __future__ import annotations

import math
import sys
import time

from mmengine.hooks import Hook

from ...registry import HOOKS
from .utils import is_iter_based


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
            if math.isfinite(loss):  # a skipped NaN batch (NonFiniteLossHook) must not stick
                self._loss = loss if self._loss is None else 0.9 * self._loss + 0.1 * loss
        batch = len(data_batch['inputs']) if data_batch else 1
        if is_iter_based(runner):  # one long "epoch": count the run's iterations
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
