"""Fit an iteration-based training run into a wall-clock budget."""
from __future__ import annotations

import math
import time
from typing import Optional

import torch
from mmengine.dist import broadcast
from mmengine.hooks import Hook

from ...registry import HOOKS
from .utils import is_iter_based


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
        if not is_iter_based(runner):
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
