"""Stop (or skip) a training step whose loss is NaN or Inf, before the optimizer touches the
weights."""
from __future__ import annotations

import math
from typing import List, Optional

import torch
from mmengine.dist import all_gather_object, all_reduce, get_world_size
from mmengine.hooks import Hook

from ...registry import HOOKS
from .utils import is_iter_based

ACTIONS = ('error', 'skip')


class NonFiniteLossError(RuntimeError):
    """A training loss was NaN or Inf; the message names the iteration and the samples."""


def _sample_name(sample, fallback: str) -> str:
    meta = getattr(sample, 'metainfo', None)
    if meta is None and isinstance(sample, dict):
        meta = sample
    meta = meta or {}
    for key in ('img_path', 'sample_idx', 'img_id'):
        value = meta.get(key)
        if value is not None:
            return f'{key}={value}'
    return fallback


def describe_batch(data_batch, limit: int = 16) -> str:
    """The samples of a batch by file name (``img_path``) or dataset index (``sample_idx``);
    samples whose input already holds NaN/Inf are marked."""
    if not isinstance(data_batch, dict):
        return 'samples unknown (the batch is not a dict)'
    samples = data_batch.get('data_samples')
    inputs = data_batch.get('inputs')
    n = len(samples) if samples is not None else (len(inputs) if inputs is not None else 0)
    names: List[str] = []
    bad: List[str] = []
    for i in range(n):
        name = _sample_name(samples[i], f'#{i} of the batch') if samples is not None \
            else f'#{i} of the batch'
        names.append(name)
        x = inputs[i] if inputs is not None and i < len(inputs) else None
        if isinstance(x, torch.Tensor) and x.is_floating_point() and \
                not bool(torch.isfinite(x).all()):
            bad.append(name)
    more = f' ... (+{len(names) - limit})' if len(names) > limit else ''
    text = f'samples of this batch: {", ".join(names[:limit])}{more}' if names else \
        'samples of this batch unknown'
    if bad:
        text = f'samples whose input holds NaN/Inf: {", ".join(bad)}; ' + text
    return text


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Check every training loss before the backward pass and the optimizer step.

    A NaN/Inf loss (a NaN pixel, a corrupt annotation, a diverging run) would otherwise
    flow into the gradients and the weights, and training would go on with a broken model
    and save it.  The hook wraps ``runner.optim_wrapper.update_params`` (called by every
    mmengine model's ``train_step``) and, when the loss is not finite:

    * ``action='error'`` (default): raises :class:`NonFiniteLossError` naming the iteration
      and the samples of the batch (``img_path`` or ``sample_idx``), before the backward pass:
      the weights and the last checkpoint stay as they were after the last good step.
    * ``action='skip'``: logs a warning with the same text and skips the step (no backward,
      no optimizer step); ``max_consecutive_skips`` skipped steps in a row are an error anyway
      (then the model, not one batch, is the problem).

    Under distributed training every process learns whether any process's loss is bad (one
    scalar all-reduce per iteration), so all processes stop or skip together and the message
    lists the samples of every process.  ``tools/train.py`` adds the hook to every run
    (``non_finite_loss = 'skip'`` in a config selects skipping); with other launchers add
    ``custom_hooks = [dict(type='NonFiniteLossHook')]``.
    """

    priority = 'VERY_HIGH'

    def __init__(self, action: str = 'error', max_consecutive_skips: int = 10):
        if action not in ACTIONS:
            raise ValueError(f'NonFiniteLossHook action must be one of {ACTIONS}, got {action!r}')
        if max_consecutive_skips < 1:
            raise ValueError('NonFiniteLossHook needs max_consecutive_skips >= 1')
        self.action = action
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped = 0            # batches skipped in this run
        self._consecutive = 0
        self._batch = None
        self._batch_idx = None
        self._losses = None
        self._runner = None

    # ------------------------------------------------------------------ wiring
    def before_train(self, runner) -> None:
        self._runner = runner
        wrapper = runner.optim_wrapper
        if not callable(getattr(wrapper, 'update_params', None)) or \
                getattr(wrapper, '_non_finite_checked', False):
            return
        original = wrapper.update_params

        def update_params(loss, *args, **kwargs):
            if self._check(loss):
                return original(loss, *args, **kwargs)
            return self._skip(wrapper)

        wrapper.update_params = update_params
        wrapper._non_finite_checked = True
        model = getattr(runner.model, 'module', runner.model)
        parse = getattr(model, 'parse_losses', None)
        if callable(parse):
            def parse_losses(losses, *args, **kwargs):
                out = parse(losses, *args, **kwargs)
                self._losses = out[1] if isinstance(out, tuple) and len(out) == 2 else None
                return out
            model.parse_losses = parse_losses

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._batch, self._batch_idx, self._losses = data_batch, batch_idx, None

    # ------------------------------------------------------------------ checking
    def _check(self, loss) -> bool:
        finite = bool(torch.isfinite(loss.detach()).all()) if isinstance(loss, torch.Tensor) \
            else math.isfinite(float(loss))
        if get_world_size() > 1:  # every process must take the same decision
            flag = torch.tensor([0.0 if finite else 1.0],
                                device=loss.device if isinstance(loss, torch.Tensor) else 'cpu')
            all_reduce(flag, op='sum')
            any_bad = bool(flag.item() > 0)
        else:
            any_bad = not finite
        if not any_bad:
            self._consecutive = 0
            return True
        text = self._describe(loss, finite)
        self._consecutive += 1
        if self.action == 'error':
            raise NonFiniteLossError(
                f'{text}\nTraining stopped before the backward pass and the optimizer step: '
                f'the weights and the checkpoints are those of the last good iteration. Check '
                f'these samples, or skip such batches with non_finite_loss = \'skip\' in the '
                f'config (tools/train.py) or custom_hooks = [dict(type=\'NonFiniteLossHook\', '
                f'action=\'skip\')].')
        if self._consecutive >= self.max_consecutive_skips:
            raise NonFiniteLossError(
                f'{text}\n{self._consecutive} batches in a row had a non-finite loss '
                f'(max_consecutive_skips={self.max_consecutive_skips}): the model, not a '
                f'batch, is broken. Training stopped before the optimizer step.')
        if self._runner is not None:
            self._runner.logger.warning(f'{text}\nSkipping this batch (no backward pass, no '
                                        f'optimizer step).')
        return False

    def _skip(self, wrapper) -> None:
        self.skipped += 1
        # keep gradient accumulation's counting aligned; drop a partial accumulation
        if hasattr(wrapper, '_inner_count'):
            wrapper._inner_count += 1
            if wrapper.should_update():
                wrapper.zero_grad()
        else:
            wrapper.zero_grad()

    def _describe(self, loss, finite: bool) -> str:
        runner = self._runner
        where = 'iteration ?'
        if runner is not None:
            where = f'iteration {runner.iter + 1}'
            if not is_iter_based(runner):
                where += f' (epoch {runner.epoch + 1}, batch {(self._batch_idx or 0) + 1})'
        value = float(loss.detach().float().sum()) if isinstance(loss, torch.Tensor) \
            else float(loss)
        if finite:
            mine = 'loss finite here'
        else:
            parts = []
            for k, v in (self._losses or {}).items():
                if k == 'loss':
                    continue
                try:
                    parts.append(f'{k}={float(v):.4g}')
                except (TypeError, ValueError, RuntimeError):
                    pass
            mine = f'loss={value}' + (f' ({", ".join(parts)})' if parts else '') + '; ' + \
                describe_batch(self._batch)
        if get_world_size() > 1:
            reports: List[Optional[str]] = all_gather_object(mine)
            lines = [f'  rank {r}: {t}' for r, t in enumerate(reports)]
            return f'non-finite training loss at {where}:\n' + '\n'.join(lines)
        return f'non-finite training loss at {where}: {mine}'

