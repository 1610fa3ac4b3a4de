"""End to end on the generated ADE20K-layout dataset: the CPU demo config trains (the loss
goes down), and ``tools/train.py`` + ``tools/test.py`` run it and report mIoU."""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch


pytestmark = [pytest.mark.usefixtures('one_thread'), pytest.mark.slow]  # end-to-end runs


ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / 'segmentation' / 'configs' / 'demo' / 'fpn_enformer-s_shapes-demo.py'


@pytest.fixture(scope='module')
def shapes_root(tmp_path_factory):
    from enformer_core.datasets.shapes_ade import make_shapes_ade
    root = tmp_path_factory.mktemp('shapes_ade')
    make_shapes_ade(root, num_train=6, num_val=3, num_classes=6, seed=0, preview=False)
    return root


def _demo_cfg(root):
    from mmengine.config import Config
    cfg = Config.fromfile(str(DEMO))
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[key].dataset.data_root = str(root)
    return cfg


def test_demo_training_lowers_the_loss(shapes_root):
    """Eight optimiser steps of the demo recipe (model, pipeline, AdamW) on one batch."""
    import enformer_core  # noqa: F401
    from mmengine.optim import build_optim_wrapper
    from mmengine.runner import Runner
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    cfg = _demo_cfg(shapes_root)
    cfg.train_dataloader.batch_size = 2
    model = MODELS.build(cfg.model)
    model.init_weights()
    loader = Runner.build_dataloader(cfg.train_dataloader, seed=0)
    batch = next(iter(loader))
    assert tuple(model.data_preprocessor(batch, True)['inputs'].shape) == (2, 3, 96, 96)
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    model.train()
    losses = [model.train_step(batch, optim)['decode.loss_ce'].item() for _ in range(8)]
    assert all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < 0.6 * losses[0], losses
    assert min(losses[-3:]) < min(losses[:3]), losses


def test_train_and_test_launchers_report_miou(shapes_root, tmp_path):
    """``tools/train.py`` (2 iterations + validation), then ``tools/test.py`` on the saved
    checkpoint: mIoU on the generated val split, equal to the training run's validation."""
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    roots = [f'{k}.dataset.data_root={shapes_root}'
             for k in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    work = tmp_path / 'work'
    r = subprocess.run(
        [sys.executable, str(ROOT / 'tools/train.py'), str(DEMO), '--work-dir', str(work),
         '--cfg-options', *roots, 'train_cfg.max_iters=2', 'train_cfg.val_interval=100',
         'default_hooks.checkpoint.interval=2', 'train_dataloader.batch_size=2',
         'default_hooks.logger.interval=1'],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ckpt = work / 'iter_2.pth'
    assert ckpt.is_file()
    log = r.stdout + r.stderr
    assert re.search(r'Iter\(train\) \[2/2\].*loss: [0-9.]+', log)
    # the training run validated the final model on the 3 val images
    val_miou = float(re.search(r'Iter\(val\) \[3/3\].*mIoU: ([0-9.]+)', log).group(1))
    r = subprocess.run(
        [sys.executable, str(ROOT / 'tools/test.py'), str(DEMO), str(ckpt),
         '--work-dir', str(tmp_path / 'test'), '--cfg-options', *roots],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout + r.stderr
    metrics = json.loads(re.search(r'^metrics: (\{.*\})$', out, re.M).group(1))
    assert 0.0 <= metrics['mIoU'] <= 100.0 and 0.0 < metrics['aAcc'] <= 100.0
    # the saved checkpoint, reloaded by tools/test.py, scores what the trained model scored
    assert abs(metrics['mIoU'] - val_miou) < 0.015, (metrics, val_miou)
    # the per-class table covers the six generated classes, evaluated on 3 val images
    for name in ('red-solid', 'green-hstripes', 'cyan-diagonal'):
        assert name in out
    assert re.search(r'Iter\(test\) \[3/3\]', out)
