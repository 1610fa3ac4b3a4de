"""tools/train.py, tools/test.py, tools/dist_train.sh, --resume and `mim test` on a tiny slice
of Fashion-MNIST (EnFormer-S at 32 px), plus the errors for bad input."""
import importlib.util
import json
import time
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / 'tools'
DEMO = ROOT / 'classification/configs/demo/enformer-s_fashion-mnist-64px.py'


def _load_tool(name):
    """tools/train.py as module ``train`` (tools/test.py imports it under that name)."""
    if str(TOOLS) not in sys.path:
        sys.path.insert(0, str(TOOLS))
    if name == 'train':
        import train
        return train
    spec = importlib.util.spec_from_file_location('enformer_tools_test', TOOLS / 'test.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


train_tool = _load_tool('train')
test_tool = _load_tool('test')
if str(ROOT / 'tests' / 'assets') not in sys.path:
    sys.path.insert(0, str(ROOT / 'tests' / 'assets'))
from reliability_helpers import fashion_mnist_slice as _slice  # noqa: E402


def _write_idx(path, arr):
    from enformer_core.datasets import write_idx
    write_idx(str(path), arr)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """A 64-train / 32-test Fashion-MNIST slice and a 32-px config using it."""
    root = tmp_path_factory.mktemp('cls')
    data = root / 'fmnist'
    data.mkdir()
    for split, n in (('train', 64), ('t10k', 32)):
        _write_idx(data / f'{split}-images-idx3-ubyte.gz', _slice(f'{split}-images-idx3-ubyte', n, 16))
        _write_idx(data / f'{split}-labels-idx1-ubyte.gz', _slice(f'{split}-labels-idx1-ubyte', n, 8))
    body = f"""
_base_ = ['{DEMO}']
pipe = [dict(type='Resize', scale=(32, 32)), dict(type='GreyToRGB'), dict(type='PackInputs')]
# one epoch of 16 images instead of the demo's time-budgeted iteration loop
train_dataloader = dict(batch_size=8, sampler=dict(type='DefaultSampler', shuffle=True),
                        dataset=dict(data_root='{data}', num_samples=16, pipeline=pipe))
train_cfg = dict(_delete_=True, by_epoch=True, max_epochs=1)
test_dataloader = dict(batch_size=16, dataset=dict(data_root='{data}', pipeline=pipe))
param_scheduler = [dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=2)]
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(by_epoch=True, interval=1, save_last=False))
custom_hooks = [dict(type='ProgressBarHook', interval=1)]
randomness = dict(seed=0)
"""
    cfg = root / 'tiny.py'
    cfg.write_text(body)
    small = root / 'tiny_small.py'  # a 4-block EnFormer: the launcher tests need no full S
    small.write_text(f"""
_base_ = ['{cfg}']
model = dict(backbone=dict(arch=dict(_delete_=True, embed_dims=[16, 16, 32, 32], depths=[1, 1, 1, 1],
                                     num_heads=[1, 1, 1, 1], head_dim=16,
                                     ffn_kernel_sizes=[3, 3, 3, 3])),
             head=dict(in_channels=32))
""")
    resume_cfg = root / 'tiny_iters.py'  # 64 images / 8 = 8 iterations per epoch
    resume_cfg.write_text(f"""
_base_ = ['{small}']
train_dataloader = dict(dataset=dict(num_samples=None))
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=3)
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=2, max_keep_ckpts=5))
""")
    return dict(root=root, data=data, cfg=str(cfg), small_cfg=str(small),
                resume_cfg=str(resume_cfg))


@pytest.fixture(scope='module')
def trained(tiny):
    """2 training iterations through tools/train.py; returns the checkpoint."""
    work = tiny['root'] / 'run'
    runner = train_tool.main([tiny['cfg'], '--work-dir', str(work)])
    assert runner.iter == 2 and runner.epoch == 1
    ckpt = (work / 'last_checkpoint').read_text().strip()
    assert Path(ckpt).is_file()
    return ckpt


def _env():
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env['PYTHONPATH'] = str(ROOT) + os.pathsep + env.get('PYTHONPATH', '')
    return env


@pytest.mark.slow
def test_train_two_iterations_then_evaluate(tiny, trained, tmp_path, capsys):
    state = torch.load(trained, map_location='cpu', weights_only=True)
    assert state['meta']['iter'] == 2
    assert all(torch.isfinite(v).all() for v in state['state_dict'].values()
               if v.is_floating_point())
    out = tmp_path / 'preds.pkl'
    metrics = test_tool.main([tiny['cfg'], trained, '--work-dir', str(tmp_path),
                              '--out', str(out)])
    assert 0.0 <= metrics['accuracy/top1'] <= 100.0
    assert metrics['accuracy/top5'] >= metrics['accuracy/top1']
    with open(out, 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == 32  # the 32 *test* images (split='test' reads the t10k files)
    test_labels = _slice('t10k-labels-idx1-ubyte', 32, 8)
    assert [int(p['gt_label']) for p in preds] == test_labels.tolist()
    assert 'metrics: {"accuracy/top1"' in capsys.readouterr().out


@pytest.mark.slow
def test_evaluate_the_backbone_in_a_cpu_deployment_form(tiny, trained, tmp_path, capsys):
    """tools/test.py --dtype: the same checkpoint evaluated in the static int8 form, calibrated
    on the batch that holds the first 10 test images; its scores stay close to fp32's without
    being equal."""
    from enformer_core.utils.launch import LaunchError
    scores = {}
    for dtype in ('fp32', 'int8-static'):
        out = tmp_path / f'{dtype}.pkl'
        metrics = test_tool.main([tiny['cfg'], trained, '--work-dir', str(tmp_path / dtype),
                                  '--out', str(out), '--dtype', dtype,
                                  '--calibration-images', '10'])
        assert 0.0 <= metrics['accuracy/top1'] <= 100.0
        with open(out, 'rb') as f:
            scores[dtype] = torch.stack([p['pred_score'] for p in pickle.load(f)])
    log = capsys.readouterr().out
    assert '[test] backbone in its fp32 CPU form' in log
    assert '[test] backbone in its int8-static CPU form, calibrated on 16 images (32x32)' in log
    assert scores['fp32'].shape == (32, 10)
    diff = (scores['int8-static'] - scores['fp32']).abs().max()
    assert 0 < diff < 0.05, diff
    with pytest.raises(LaunchError, match='at least 1'):
        test_tool.main([tiny['cfg'], trained, '--dtype', 'int8-static',
                        '--calibration-images', '0'])
    with pytest.raises(LaunchError, match='one process'):
        test_tool.main([tiny['cfg'], trained, '--dtype', 'bf16', '--launcher', 'pytorch'])
    with pytest.raises(LaunchError, match='--keep-float goes with'):
        test_tool.main([tiny['cfg'], trained, '--dtype', 'bf16', '--keep-float', 'stem.conv1'])
    # a layer kept float, and a pattern that names none
    test_tool.main([tiny['cfg'], trained, '--work-dir', str(tmp_path / 'kept'), '--dtype',
                    'int8-static', '--calibration-images', '10', '--keep-float', 'stem.conv1'])
    assert '(32x32); kept float: stem.conv1' in capsys.readouterr().out
    with pytest.raises(LaunchError, match=r"\['stem.cnv1'\] match no layer.*stages.0.blocks"):
        test_tool.main([tiny['cfg'], trained, '--dtype', 'int8', '--keep-float', 'stem.cnv1'])


@pytest.mark.slow
def test_resume_continues_from_the_saved_iteration(tiny):
    work = tiny['root'] / 'resume'
    first = train_tool.main([tiny['resume_cfg'], '--work-dir', str(work)])
    assert first.iter == 3  # stopped after 3 of the 8 iterations of the epoch
    assert (work / 'iter_2.pth').is_file()
    # mmengine names each run's log folder by the second it started: keep the two apart
    time.sleep(1.1)
    runner = train_tool.main([tiny['resume_cfg'], '--work-dir', str(work), '--resume',
                              str(work / 'iter_2.pth'), '--cfg-options', 'train_cfg.max_iters=4'])
    assert runner.iter == 4
    logs = sorted(work.glob('*/vis_data/scalars.json'))
    iters = [json.loads(line)['iter'] for line in logs[-1].read_text().splitlines()]
    assert iters[0] == 3 and iters[-1] == 4  # iterations 3..4 (1-based), not 1..
    # --resume without a path picks the latest checkpoint of the work dir (iter_4)
    again = train_tool.main([tiny['resume_cfg'], '--work-dir', str(work), '--resume',
                             '--cfg-options', 'train_cfg.max_iters=5'])
    assert again.iter == 5


@pytest.mark.slow
def test_dist_train_two_cpu_processes(tiny, tmp_path):
    work = tmp_path / 'dist'
    proc = subprocess.run(
        ['bash', str(TOOLS / 'dist_train.sh'), tiny['small_cfg'], '2', '--work-dir', str(work),
         '--cfg-options', 'train_dataloader.batch_size=4'],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = (work / 'last_checkpoint').read_text().strip()
    meta = torch.load(ckpt, map_location='cpu', weights_only=True)['meta']
    # 16 images, 4 per process, 2 processes -> 2 iterations (1 process would need 4)
    assert meta['iter'] == 2
    log = next(work.glob('*/*.log')).read_text()
    assert 'Distributed training: True' in log


@pytest.mark.slow
def test_mim_test_evaluates_a_checkpoint(tiny, trained, tmp_path):
    mim = Path(sys.executable).parent / 'mim'
    assert mim.is_file(), 'openmim is missing from the environment (tools/setup_env.sh)'
    proc = subprocess.run(
        [str(mim), 'test', 'mmpretrain', tiny['cfg'], '--checkpoint', trained,
         '--work-dir', str(tmp_path)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'accuracy/top1' in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------ bad input
def test_missing_dataset_path_is_named(tiny, tmp_path):
    with pytest.raises(train_tool.LaunchError) as err:
        train_tool.main([tiny['cfg'], '--work-dir', str(tmp_path),
                         '--cfg-options', 'train_dataloader.dataset.data_root=/no/such/fmnist'])
    msg = str(err.value)
    assert '/no/such/fmnist' in msg and 'classification/README.md' in msg


def test_missing_imagenet_is_named(tmp_path):
    cfg = ROOT / 'classification/configs/enformer/enformer-s_8xb128_in1k.py'
    with pytest.raises(train_tool.LaunchError, match=r'data/imagenet.*Data layout'):
        train_tool.main([str(cfg), '--work-dir', str(tmp_path),
                         '--cfg-options', 'train_dataloader.dataset.data_root=data/imagenet'])


def test_config_without_custom_imports(tmp_path, capsys):
    cfg = tmp_path / 'no_imports.py'
    cfg.write_text("default_scope = 'mmpretrain'\n"
                   "model = dict(type='ImageClassifier', backbone=dict(type='EnFormer'))\n")
    with pytest.raises(SystemExit) as exc:
        train_tool.run_main(lambda: train_tool.main([str(cfg)]))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert 'does not import enformer_core' in err
    assert "custom_imports = dict(imports=['enformer_core'], allow_failed_imports=False)" in err


@pytest.mark.slow
def test_checkpoint_of_another_variant(tiny, trained, tmp_path):
    with pytest.raises(train_tool.LaunchError) as err:
        test_tool.main([tiny['cfg'], trained, '--work-dir', str(tmp_path), '--cfg-options',
                        'model.backbone.arch=b', 'model.head.in_channels=512'])
    msg = str(err.value)
    assert 'does not fit' in msg and "arch='b'" in msg
    assert 'of another shape' in msg and 'backbone.stem.conv1.weight' in msg
