"""TimeBudgetHook (the demo's wall-clock budget): the run ends on the last iteration that fits,
the cosine decay is moved with it and still reaches its floor, a resumed run keeps the decision,
and misuse is refused with a message that says what to change."""
import time

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.dataset import BaseDataset
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, MODELS
from mmengine.runner import Runner

import enformer_core  # noqa: F401  (registers TimeBudgetHook)
from enformer_core.engine import TimeBudgetHook

SLEEP = 0.02  # seconds per training iteration: the toy step is dominated by it


@MODELS.register_module(force=True)
class SleepyRegressor(BaseModel):
    """A linear regressor whose training step takes at least SLEEP seconds."""

    def __init__(self, slow_after=None):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.slow_after = slow_after  # from this step on, steps take 3x as long
        self.steps = 0

    def forward(self, inputs, targets=None, mode='tensor', **unused):
        inputs = torch.stack(inputs) if isinstance(inputs, (list, tuple)) else inputs
        out = self.linear(inputs)
        if mode == 'loss':
            self.steps += 1
            slow = self.slow_after is not None and self.steps > self.slow_after
            time.sleep(3 * SLEEP if slow else SLEEP)
            targets = torch.stack(targets) if isinstance(targets, (list, tuple)) else targets
            return dict(loss=((out - targets) ** 2).mean())
        return out


@DATASETS.register_module(force=True)
class SleepyData(BaseDataset):
    def __init__(self, **kwargs):
        super().__init__(serialize_data=False, lazy_init=False, **kwargs)

    def load_data_list(self):
        x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
        return [dict(inputs=x[i], targets=x[i, :1]) for i in range(32)]


def _cfg(work_dir, minutes, max_iters=5000, warmup=10, loop='IterBasedTrainLoop',
         slow_after=None, **hook):
    train_cfg = (dict(type=loop, max_iters=max_iters) if loop == 'IterBasedTrainLoop'
                 else dict(by_epoch=True, max_epochs=1))
    return Config(dict(
        default_scope='mmpretrain',  # where the demo's hooks are registered
        model=dict(type='SleepyRegressor', slow_after=slow_after),
        work_dir=str(work_dir),
        experiment_name=f'budget_{time.time_ns()}',  # two runners in one second clash
        train_dataloader=dict(dataset=dict(type='SleepyData'), batch_size=4, num_workers=0,
                              sampler=dict(type='InfiniteSampler', shuffle=True)),
        train_cfg=train_cfg,
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        param_scheduler=[
            dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=warmup),
            dict(type='CosineAnnealingLR', eta_min=1e-4, by_epoch=False, begin=warmup,
                 end=max_iters)][0 if warmup else 1:],
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', by_epoch=False,
                                           interval=10 ** 6, save_last=True),
                           logger=dict(type='LoggerHook', interval=10 ** 6)),
        custom_hooks=[dict(type='TimeBudgetHook', minutes=minutes, **hook)],
        randomness=dict(seed=0),
        log_level='WARNING',
    ))


def _lr(runner):
    return runner.optim_wrapper.optimizer.param_groups[0]['lr']


def test_run_ends_within_the_budget_with_the_decay_moved(tmp_path):
    budget_min = 0.02  # 1.2 s: about 60 toy iterations, far fewer than the 5000 configured
    runner = Runner.from_cfg(_cfg(tmp_path / 'run', budget_min, skip_iters=2,
                                  calibrate_iters=5, min_iters=11))
    t = time.time()
    runner.train()
    elapsed = time.time() - t
    hook = next(h for h in runner.hooks if isinstance(h, TimeBudgetHook))
    decided = hook.decided
    assert decided is not None and 11 <= decided['max_iters'] < 5000
    assert runner.iter == decided['max_iters']
    assert decided['seconds_per_iter'] >= SLEEP
    # the loop stopped because of the budget, not the configured 5000 iterations
    assert elapsed < 60 * budget_min + 50 * decided['seconds_per_iter'] + 5.0
    # the cosine decay was stretched/shrunk to the new end: the last step is at its floor
    cosine = runner.param_schedulers[1]
    assert cosine.end == decided['max_iters'] and cosine.T_max == decided['max_iters'] - 10
    assert _lr(runner) == pytest.approx(1e-4, rel=0.05, abs=2e-3)
    # the decision travels with the checkpoint
    state = torch.load(tmp_path / 'run' / f"iter_{decided['max_iters']}.pth",
                       map_location='cpu', weights_only=True)
    assert state['meta']['time_budget']['max_iters'] == decided['max_iters']


def _lrs_recorder(runner):
    lrs = []
    from mmengine.hooks import Hook

    class Record(Hook):
        priority = 'LOWEST'

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            lrs.append(_lr(runner))
    runner.register_hook(Record())
    return lrs


def test_refinement_follows_a_machine_that_slows_down(tmp_path):
    # decided on fast steps, then every step takes 3x as long: deciding once would overrun
    # the budget ~2-3x; the renewed estimates move the end earlier and bend the cosine
    budget_min = 0.03  # 1.8 s
    runner = Runner.from_cfg(_cfg(tmp_path / 'run', budget_min, slow_after=20, skip_iters=2,
                                  calibrate_iters=5, min_iters=11, refine_interval=5,
                                  refine_until=0.9))
    lrs = _lrs_recorder(runner)
    t = time.time()
    runner.train()
    elapsed = time.time() - t
    hook = next(h for h in runner.hooks if isinstance(h, TimeBudgetHook))
    first_guess = 11 + (60 * budget_min - 7 * SLEEP) / SLEEP  # what the first decision saw
    assert runner.iter == hook.decided['max_iters'] < 0.7 * first_guess
    assert hook.decided['seconds_per_iter'] > 1.5 * SLEEP
    assert elapsed < 60 * budget_min + 1.5
    # the decay stays smooth (each step lowers the lr by a small ratio, never a jump) and
    # ends at its floor
    cosine = lrs[10:]
    assert all(b <= a * 1.0001 for a, b in zip(cosine, cosine[1:]))
    assert max(a - b for a, b in zip(cosine, cosine[1:])) < 0.25 * cosine[0]
    assert lrs[-1] == pytest.approx(1e-4, abs=2e-3)


def test_resume_keeps_the_decision(tmp_path):
    work = tmp_path / 'run'
    first = Runner.from_cfg(_cfg(work, 0.01, skip_iters=1, calibrate_iters=3, min_iters=11))
    first.train()
    decided = next(h for h in first.hooks if isinstance(h, TimeBudgetHook)).decided
    # a resumed run with a far larger budget must not re-decide (its schedule is fixed)
    time.sleep(1.1)  # mmengine names log folders by the second
    cfg = _cfg(work, 10.0, skip_iters=1, calibrate_iters=3, min_iters=11)
    cfg.resume = True
    cfg.load_from = str(work / f"iter_{decided['max_iters']}.pth")
    again = Runner.from_cfg(cfg)
    again.train()
    hook = next(h for h in again.hooks if isinstance(h, TimeBudgetHook))
    assert hook.decided['max_iters'] == decided['max_iters']
    assert again.iter == decided['max_iters']


def test_a_budget_larger_than_the_run_keeps_the_configured_end(tmp_path):
    runner = Runner.from_cfg(_cfg(tmp_path / 'run', 5.0, max_iters=20, warmup=8,
                                  skip_iters=1, calibrate_iters=3))
    runner.train()
    assert runner.iter == 20
    assert next(h for h in runner.hooks if isinstance(h, TimeBudgetHook)).decided['max_iters'] == 20


def test_misuse_is_refused(tmp_path):
    with pytest.raises(ValueError, match='positive budget'):
        TimeBudgetHook(minutes=0)
    with pytest.raises(ValueError, match='calibrate_iters'):
        TimeBudgetHook(minutes=1, calibrate_iters=0)
    epoch_based = Runner.from_cfg(_cfg(tmp_path / 'epochs', 1.0, loop='epoch'))
    with pytest.raises(ValueError, match='IterBasedTrainLoop'):
        epoch_based.train()
    # the decaying scheduler has already begun when the hook decides (no warm-up before it)
    started = Runner.from_cfg(_cfg(tmp_path / 'started', 0.01, warmup=0, skip_iters=1,
                                   calibrate_iters=3))
    with pytest.raises(RuntimeError, match='already started'):
        started.train()
