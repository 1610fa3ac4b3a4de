"""No silent failure in tools/train.py and tools/test.py (docs/reliability.md): a NaN pixel, an
empty or diverged checkpoint, a checkpoint of another variant through load_from / --resume, the
iteration-based demo's log lines, and the distributed options the CPU launcher must keep."""
import subprocess
import os
import re
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / 'tests' / 'assets'
for _p in (ASSETS, ROOT / 'tools'):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import reliability_helpers as rh  # noqa: E402
import train as train_tool  # noqa: E402  (tools/train.py)
from enformer_core.utils.launch import run_main  # noqa: E402


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return rh.make_tiny(tmp_path_factory.mktemp('reliability'))


@pytest.fixture(scope='module')
def test_tool(load_tool):
    return load_tool('tools/test.py')


def _exit(main, capsys):
    """Run ``main`` as the tools' ``__main__`` does; return (exit status, stderr).

    In one pytest process a logger of an earlier test can still hold that test's (closed)
    capture stream; Python then prints a ``--- Logging error ---`` report with a traceback of
    its own. That is the test harness, not the tool, so those reports are dropped here."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_main(main)
    err = re.sub(r'--- Logging error ---\n.*?\nArguments: [^\n]*\n', '', capsys.readouterr().err,
                 flags=re.S)
    return exc.value.code, err


def _params(model):
    model = getattr(model, 'module', model)
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _name():
    """A unique experiment name: mmengine names its logger by config and start second, so two
    runs in one second would log into the first one's file."""
    return f'experiment_name=reliability_{time.time_ns()}'


def _ckpt_state(path):
    return torch.load(path, map_location='cpu', weights_only=True)['state_dict']


# --------------------------------------------------------------------- NaN in a training batch
def test_nan_sample_stops_training_naming_iteration_and_sample(tiny, tmp_path, capsys):
    """Sample 6 (iteration 2 of 4-image batches) holds a NaN pixel: the run stops at
    iteration 2 with an error naming it, before the optimizer step, and the checkpoint of
    iteration 1 stays loadable and finite."""
    work = tmp_path / 'nan'
    code, err = _exit(lambda: train_tool.main([tiny['poisoned'], '--work-dir', str(work)]), capsys)
    assert code == 1
    assert 'non-finite training loss at iteration 2' in err
    assert 'samples whose input holds NaN/Inf: sample_idx=6' in err
    assert 'sample_idx=4, sample_idx=5, sample_idx=6, sample_idx=7' in err
    assert "non_finite_loss = 'skip'" in err
    assert 'Traceback' not in err
    assert (work / 'iter_1.pth').is_file() and not (work / 'iter_2.pth').exists()
    state = _ckpt_state(work / 'iter_1.pth')
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    from enformer_core import load_checkpoint
    from enformer_core.analysis import load_model
    lm = load_model(tiny['small'])  # the checkpoint loads strictly into the model
    assert load_checkpoint(lm.model, str(work / 'iter_1.pth'), log=False).fits


def test_nan_sample_is_skipped_when_asked(tiny, tmp_path):
    work = tmp_path / 'skip'
    runner = train_tool.main([tiny['poisoned'], '--work-dir', str(work),
                              '--cfg-options', 'non_finite_loss=skip', _name()])
    assert runner.iter == 4  # all 4 iterations ran
    hooks = [h for h in runner.hooks if type(h).__name__ == 'NonFiniteLossHook']
    assert len(hooks) == 1 and hooks[0].action == 'skip' and hooks[0].skipped == 1
    params = _params(runner.model)
    assert all(torch.isfinite(v).all() for v in params.values())
    log = next(work.glob('*/*.log')).read_text()
    assert 'non-finite training loss at iteration 2' in log and 'sample_idx=6' in log
    assert 'Skipping this batch' in log


def test_skipping_stops_when_every_batch_is_bad(tiny, tmp_path, capsys):
    """Skipping is for a few bad samples: consecutive bad batches are an error anyway."""
    cfg = tmp_path / 'all_bad.py'
    cfg.write_text(f"_base_ = ['{tiny['poisoned']}']\n"
                   "pipe = [dict(type='Resize', scale=(32, 32)),\n"
                   "        dict(type='PoisonPixels', sample_idx=list(range(16))),\n"
                   "        dict(type='GreyToRGB'), dict(type='PackInputs')]\n"
                   "train_dataloader = dict(dataset=dict(pipeline=pipe))\n"
                   "custom_hooks = [dict(type='NonFiniteLossHook', action='skip',\n"
                   "                     max_consecutive_skips=2)]\n")
    code, err = _exit(lambda: train_tool.main([str(cfg), '--work-dir', str(tmp_path / 'w')]),
                      capsys)
    assert code == 1 and '2 batches in a row' in err and 'iteration 2' in err


def test_non_finite_loss_hook_is_added_once(tiny):
    from enformer_core.utils.launch import LaunchError, add_non_finite_loss_hook, load_config
    cfg = load_config(tiny['small'])
    add_non_finite_loss_hook(cfg)
    add_non_finite_loss_hook(cfg)
    assert [h['type'] for h in cfg.custom_hooks] == ['NonFiniteLossHook']
    assert cfg.custom_hooks[0]['action'] == 'error'
    cfg = load_config(tiny['small'], {'non_finite_loss': 'ignore'})
    with pytest.raises(LaunchError, match="non_finite_loss must be one of"):
        add_non_finite_loss_hook(cfg)


# ------------------------------------------------------------------- checkpoints through tools
@pytest.mark.slow
def test_test_py_empty_checkpoint_exits_2(tiny, tmp_path):
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    proc = subprocess.run([sys.executable, str(ROOT / 'tools/test.py'), tiny['small'],
                           str(empty), '--work-dir', str(tmp_path)],
                          cwd=ROOT, env=rh.subprocess_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert 'is empty (0 bytes)' in proc.stderr and 'Traceback' not in proc.stderr


def test_train_py_resume_from_empty_checkpoint_exits_2(tiny, tmp_path, capsys):
    empty = tmp_path / 'iter_3.pth'
    empty.write_bytes(b'')
    work = tmp_path / 'w'
    code, err = _exit(lambda: train_tool.main([tiny['small'], '--work-dir', str(work),
                                               '--resume', str(empty)]), capsys)
    assert code == 2 and 'is empty (0 bytes)' in err
    # --resume without a path: the work dir's last_checkpoint points at the empty file
    work.mkdir(exist_ok=True)
    (work / 'last_checkpoint').write_text(str(empty))
    code, err = _exit(lambda: train_tool.main([tiny['small'], '--work-dir', str(work),
                                               '--resume']), capsys)
    assert code == 2 and 'is empty (0 bytes)' in err


def test_test_py_non_finite_checkpoint_exits_2_naming_tensors(tiny, tmp_path, capsys, test_tool):
    from enformer_core.analysis import load_model
    state = load_model(tiny['small']).model.state_dict()
    state['backbone.stem.conv1.weight'].view(-1)[0] = float('nan')
    state['head.fc.weight'].view(-1)[3] = float('inf')
    path = tmp_path / 'diverged.pth'
    torch.save({'state_dict': state}, path)
    code, err = _exit(lambda: test_tool.main([tiny['small'], str(path),
                                              '--work-dir', str(tmp_path)]), capsys)
    assert code == 2 and 'NaN or Inf' in err
    assert 'backbone.stem.conv1.weight' in err and 'head.fc.weight' in err


def test_train_py_load_from_of_another_variant_exits_2(tiny, tmp_path, capsys):
    from enformer_core import create_model
    b = tmp_path / 'enformer_b.pth'
    torch.save({'state_dict': create_model('enformer_b', num_classes=10).state_dict()}, b)
    code, err = _exit(lambda: train_tool.main([tiny['s'], '--work-dir', str(tmp_path / 'w'),
                                               '--cfg-options', f'load_from={b}']), capsys)
    assert code == 2
    assert 'does not fit' in err and 'of another shape' in err and "arch='s'" in err
    assert 'backbone.stem.conv1.weight' in err
    assert not list((tmp_path / 'w').glob('iter_*.pth'))  # nothing trained


def test_train_py_init_cfg_of_another_variant_exits_2(tiny, tmp_path, capsys):
    """B ImageNet weights in an S backbone's init_cfg: the Runner's init_weights raises deep in
    mmengine; tools/train.py reports it as one message, exit 2, before any step."""
    from enformer_core import create_model
    b = tmp_path / 'enformer-b_in1k.pth'
    torch.save({'state_dict': create_model('enformer_b').state_dict()}, b)
    work = tmp_path / 'w'
    code, err = _exit(lambda: train_tool.main([
        tiny['s'], '--work-dir', str(work), '--cfg-options',
        'model.backbone.init_cfg.type=Pretrained', f'model.backbone.init_cfg.checkpoint={b}',
        'model.backbone.init_cfg.prefix=backbone.']), capsys)
    assert code == 2 and 'Traceback' not in err
    assert 'does not fit EnFormer' in err and 'of another shape' in err
    assert not list(work.glob('iter_*.pth'))


def test_train_py_load_from_loads_the_weights(tiny, tmp_path):
    """A fitting load_from is loaded and not overwritten by the initialisation: with lr 0
    the trained model holds exactly the checkpoint's parameters."""
    from enformer_core.analysis import load_model
    g = torch.Generator().manual_seed(1)
    state = load_model(tiny['small']).model.state_dict()
    state = {k: v + 0.25 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
             for k, v in state.items()}
    path = tmp_path / 'fits.pth'
    torch.save({'state_dict': state}, path)
    runner = train_tool.main([tiny['small'], '--work-dir', str(tmp_path / 'w'), '--cfg-options',
                              f'load_from={path}', 'optim_wrapper.optimizer.lr=0',
                              'train_cfg.max_iters=1'])
    params = _params(runner.model)
    assert params and all(torch.equal(v, state[k]) for k, v in params.items())


# ------------------------------------------------------------------------- demo log lines
@pytest.mark.slow
def test_iteration_based_demo_logs_iterations(tiny, tmp_path):
    """The demo config (iteration-based) logs ``Iter(train) [3/6]``, not
    ``Epoch(train) [1][3/4]``, also past the dataset's length (4 batches)."""
    work = tmp_path / 'log'
    train_tool.main([tiny['small'], '--work-dir', str(work),
                     '--cfg-options', 'train_cfg.max_iters=6', _name()])
    log = next(work.glob('*/*.log')).read_text()
    assert 'Iter(train) [6/6]' in log and 'Iter(train) [5/6]' in log
    assert 'Epoch(train)' not in log


def test_every_iteration_based_demo_config_logs_by_iteration():
    from mmengine.config import Config
    for path in sorted(ROOT.glob('*/configs/demo/*.py')):
        cfg = Config.fromfile(str(path))
        if cfg.train_cfg.get('type') == 'IterBasedTrainLoop' or \
                cfg.train_cfg.get('by_epoch') is False:
            assert cfg.get('log_processor', {}).get('by_epoch') is False, path


# ----------------------------------------------------------------- distributed options on CPU
def test_prepare_distributed_keeps_timeout_and_ddp_options(monkeypatch):
    """On CPU the launcher initialises gloo itself: the config's timeout reaches
    init_process_group, find_unused_parameters and the wrapper options reach DDP."""
    import datetime

    from mmengine.config import Config

    import enformer_core.utils.dist as d
    seen = {}
    monkeypatch.setattr(d.torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(d.dist, 'is_initialized', lambda: False)
    monkeypatch.setattr(d.dist, 'init_process_group', lambda **kw: seen.update(kw))
    for k, v in dict(RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
                     MASTER_PORT='29999').items():
        monkeypatch.setenv(k, v)
    cfg = Config(dict(model=dict(type='X', norm_cfg=dict(type='SyncBN')),
                      find_unused_parameters=True,
                      env_cfg=dict(dist_cfg=dict(backend='nccl', timeout=20))))
    d.prepare_distributed(cfg, 'pytorch')
    assert seen == dict(backend='gloo', timeout=datetime.timedelta(seconds=20))
    assert cfg.env_cfg.dist_cfg == dict(backend='gloo', timeout=20.0)
    assert cfg.model_wrapper_cfg == dict(type='MMDistributedDataParallel', device_ids=None,
                                         broadcast_buffers=False, find_unused_parameters=True)
    assert cfg.model.norm_cfg.type == 'BN'
    # without a timeout torch's default stays; a wrapper config of the user is kept
    seen.clear()
    cfg = Config(dict(model_wrapper_cfg=dict(type='MMDistributedDataParallel',
                                             broadcast_buffers=True,
                                             detect_anomalous_params=True)))
    d.prepare_distributed(cfg, 'pytorch')
    assert seen == dict(backend='gloo')
    assert cfg.model_wrapper_cfg == dict(type='MMDistributedDataParallel', device_ids=None,
                                         broadcast_buffers=True, detect_anomalous_params=True,
                                         find_unused_parameters=False)
    cfg = Config(dict(env_cfg=dict(dist_cfg=dict(backend='gloo', timeout='soon'))))
    with pytest.raises(ValueError, match='number of seconds'):
        d.prepare_distributed(cfg, 'pytorch')


def test_slurm_variables_map_onto_torchrun_ones(monkeypatch):
    import enformer_core.utils.dist as d
    assert d.first_slurm_host('gpu-node[03-05,9],cpu1') == 'gpu-node03'
    assert d.first_slurm_host('n7,n8') == 'n7' and d.first_slurm_host('x[12]') == 'x12'
    monkeypatch.setattr(d.torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(d.dist, 'is_initialized', lambda: True)
    saved = dict(os.environ)  # prepare_distributed sets RANK etc.: none may leak out
    try:
        for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT', 'SLURM_STEP_NODELIST'):
            os.environ.pop(k, None)
        os.environ.update(LOCAL_RANK='0',  # what train.py's --local-rank default exports
                          SLURM_PROCID='3', SLURM_NTASKS='4', SLURM_LOCALID='1',
                          SLURM_NODELIST='node[01-02]')
        from mmengine.config import Config
        d.prepare_distributed(Config(dict()), 'slurm')
        assert (os.environ['RANK'], os.environ['WORLD_SIZE'], os.environ['LOCAL_RANK'],
                os.environ['MASTER_ADDR'], os.environ['MASTER_PORT']) == \
            ('3', '4', '1', 'node01', '29500')
    finally:
        os.environ.clear()
        os.environ.update(saved)
