"""Distributed runs that must finish, or fail by themselves, on one CPU machine
(docs/reliability.md): a hung process and the gloo timeout, FEC under DDP with the shipped
config, a 2-node torchrun equal to a 1-node one, the Slurm launcher under a stand-in srun, and
a NaN on one process stopping every process."""
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / 'tests' / 'assets'
TOOLS = ROOT / 'tools'
if str(ASSETS) not in sys.path:
    sys.path.insert(0, str(ASSETS))

import reliability_helpers as rh  # noqa: E402
from enformer_core.checkpoint import torch_load  # noqa: E402  (allow-lists mmengine's types)

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    # 32 training images: 4 iterations of 4 images on each of 2 processes
    return rh.make_tiny(tmp_path_factory.mktemp('reliability_dist'), n_train=32)


class Jobs:
    """Processes started by a test, each in its own session; whatever is left is killed
    (SIGKILL to the session: also a SIGSTOPped rank) when the test ends."""

    def __init__(self):
        self.procs = []

    def start(self, cmd, log, **kw):
        f = open(log, 'w')
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                             start_new_session=True, **kw)
        p.log = Path(log)
        self.procs.append((p, f))
        return p

    def wait(self, p, timeout):
        try:
            return p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f'{p.args} still running after {timeout} s; log:\n'
                        + p.log.read_text()[-3000:])

    def cleanup(self):
        for p, f in self.procs:
            # torchrun starts its workers in sessions of their own: kill the whole tree
            for pid in [p.pid] + _descendants(p.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            p.wait()
            f.close()


def _descendants(pid):
    """Process ids below ``pid`` (Linux /proc), children first."""
    out, todo = [], [pid]
    while todo:
        cur = todo.pop()
        kids = []
        for task in Path(f'/proc/{cur}/task').glob('*'):
            try:
                kids += [int(k) for k in (task / 'children').read_text().split()]
            except OSError:
                pass
        out += kids
        todo += kids
    return out


@pytest.fixture
def jobs():
    j = Jobs()
    yield j
    j.cleanup()


def _dist_train(jobs, cfg, nproc, work, log, *options, env=None):
    return jobs.start(['bash', str(TOOLS / 'dist_train.sh'), str(cfg), str(nproc),
                       '--work-dir', str(work), *options], log,
                      env=env or rh.subprocess_env())


def _final_state(work):
    ckpt = (Path(work) / 'last_checkpoint').read_text().strip()
    return torch_load(ckpt)


def _log(p):
    return p.log.read_text()


# ------------------------------------------------------------------------------ hung rank
def test_hung_rank_ends_the_job_after_the_timeout(tiny, tmp_path, jobs):
    """Rank 1 stops itself (SIGSTOP) before iteration 3; with env_cfg.dist_cfg.timeout=20
    rank 0's collective fails after 20 s and torchrun ends the job: non-zero status within
    about a minute instead of torch's default 30 minutes."""
    cfg = tmp_path / 'stop.py'
    cfg.write_text(f"_base_ = ['{tiny['small']}']\n"
                   "train_cfg = dict(max_iters=400)\n"
                   "default_hooks = dict(checkpoint=dict(interval=1000))\n"
                   "custom_hooks = [dict(type='StopRankHook', rank=1, at_iter=3)]\n")
    t0 = time.time()
    p = _dist_train(jobs, cfg, 2, tmp_path / 'w', tmp_path / 'log.txt',
                    '--cfg-options', 'env_cfg.dist_cfg.timeout=20')
    code = jobs.wait(p, timeout=300)
    elapsed = time.time() - t0
    log = _log(p)
    assert code != 0, log[-3000:]
    assert 'StopRankHook: rank 1 stops itself' in log
    assert 'Timed out waiting 20000ms' in log
    assert 'a collective operation timed out' in log and 'env_cfg.dist_cfg.timeout' in log
    assert elapsed < 240, elapsed  # 20 s timeout + torchrun's 30 s grace + start-up


# --------------------------------------------------------------------- FEC under DDP as shipped
def _imagenet_folder(root, per_class=8):
    """An ImageNet-layout folder (train/, val/ and meta/*.txt; 2 classes of small JPEGs)."""
    import numpy as np
    from PIL import Image
    g = np.random.default_rng(0)
    (root / 'meta').mkdir(parents=True)
    for split in ('train', 'val'):
        lines = []
        for label, c in enumerate(('n01440764', 'n01443537')):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(g.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
                    d / f'{c}_{i}.JPEG', quality=90)
                lines.append(f'{c}/{c}_{i}.JPEG {label}')
        (root / 'meta' / f'{split}.txt').write_text('\n'.join(lines) + '\n')
    return root


def test_fec_trains_under_ddp_with_the_shipped_config(tmp_path, jobs):
    """FEC's cluster-pooling conv_f never receives a gradient (as published); the shipped
    config's find_unused_parameters = True must reach DDP, or the second iteration fails
    ('Expected to have finished reduction in the prior iteration')."""
    data = _imagenet_folder(tmp_path / 'imagenet')
    cfg = ROOT / 'classification/configs/fec/fec-small_8xb128_in1k.py'
    opts = []
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        opts += [f'{loader}.dataset.data_root={data}', f'{loader}.num_workers=0',
                 f'{loader}.batch_size=2']
    opts += ['train_dataloader.dataset.pipeline.1.scale=32',   # RandomResizedCrop 224 -> 32
             'val_dataloader.dataset.pipeline.1.scale=36',
             'val_dataloader.dataset.pipeline.2.crop_size=32',
             'train_cfg.max_epochs=1', 'train_cfg.val_interval=10',
             'default_hooks.logger.interval=1', 'experiment_name=fec_ddp']
    p = _dist_train(jobs, cfg, 2, tmp_path / 'w', tmp_path / 'log.txt', '--cfg-options', *opts)
    code = jobs.wait(p, timeout=400)
    log = _log(p)
    assert code == 0, log[-4000:]
    state = _final_state(tmp_path / 'w')
    # 16 images, 2 per process, 2 processes: 4 iterations
    assert state['meta']['iter'] == 4
    assert 'find_unused_parameters=True' in log.replace(' ', '')  # the config dump
    sd = state['state_dict']
    assert any('conv_f' in k for k in sd)
    assert all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())


# ------------------------------------------------------------------------ 2 nodes == 1 node
def test_two_nodes_give_the_weights_of_one_node(tiny, tmp_path, jobs):
    """torchrun --nnodes 2 --node_rank {0,1} (through tools/dist_train.sh with NNODES /
    NODE_RANK / MASTER_ADDR / PORT), one process per node, ends with the same weights as
    one node with 2 processes."""
    one = _dist_train(jobs, tiny['small'], 2, tmp_path / 'one', tmp_path / 'one.txt')
    assert jobs.wait(one, timeout=300) == 0, _log(one)[-3000:]
    port = rh.free_port()
    nodes = [_dist_train(jobs, tiny['small'], 1, tmp_path / 'two', tmp_path / f'node{r}.txt',
                         env=rh.subprocess_env(NNODES=2, NODE_RANK=r, MASTER_ADDR='127.0.0.1',
                                               PORT=port))
             for r in (0, 1)]
    for p in nodes:
        assert jobs.wait(p, timeout=300) == 0, _log(p)[-3000:]
    a, b = _final_state(tmp_path / 'one'), _final_state(tmp_path / 'two')
    assert a['meta']['iter'] == b['meta']['iter'] == 4
    log = next((tmp_path / 'two').glob('*/*.log')).read_text()
    assert 'Distributed training: True' in log and 'GPU number: 2' in log  # (= processes)
    sa, sb = a['state_dict'], b['state_dict']
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), rtol=0, atol=1e-6), k


# ------------------------------------------------------------------------------------ Slurm
SRUN = '''#!{python}
"""A stand-in for Slurm's srun on one machine: starts --ntasks copies of the command with
the variables Slurm sets, waits for all, exits with the first failure."""
import os, subprocess, sys
args, opts = sys.argv[1:], {{}}
while args and args[0].startswith('-'):
    a = args.pop(0)
    if '=' in a:
        k, v = a.split('=', 1)
    else:
        k, v = a, args.pop(0)
    opts[k] = v
n = int(opts['--ntasks'])
per_node = int(opts.get('--ntasks-per-node', n))
with open(os.environ['SRUN_RECORD'], 'w') as f:
    f.write(' '.join(sys.argv[1:]))
procs = []
for i in range(n):
    env = dict(os.environ, SLURM_PROCID=str(i), SLURM_NTASKS=str(n),
               SLURM_LOCALID=str(i % per_node), SLURM_NODEID=str(i // per_node),
               SLURM_NNODES=str((n + per_node - 1) // per_node), SLURM_NODELIST='localhost',
               SLURM_STEP_NODELIST='localhost', SLURM_JOB_ID='4242',
               SLURM_JOB_NAME=opts.get('--job-name', ''),
               SLURM_CPUS_PER_TASK=opts.get('--cpus-per-task', '1'))
    procs.append(subprocess.Popen(args, env=env))
codes = [p.wait() for p in procs]
sys.exit(next((c for c in codes if c), 0))
'''


def test_slurm_train_two_tasks_under_a_stand_in_srun(tiny, tmp_path, jobs):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    srun = bin_dir / 'srun'
    srun.write_text(SRUN.format(python=sys.executable))
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    record = tmp_path / 'srun_args.txt'
    env = rh.subprocess_env(PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', GPUS=2,
                            GPUS_PER_NODE=2, CPUS_PER_TASK=1, MASTER_PORT=rh.free_port(),
                            SRUN_RECORD=record)
    work = tmp_path / 'slurm'
    p = jobs.start(['bash', str(TOOLS / 'slurm_train.sh'), 'cpu', 'reliability', tiny['small'],
                    str(work)], tmp_path / 'log.txt', env=env)
    assert jobs.wait(p, timeout=300) == 0, _log(p)[-3000:]
    args = record.read_text()
    assert '--ntasks=2' in args and '--launcher=slurm' in args and 'tools/train.py' in args
    state = _final_state(work)
    assert state['meta']['iter'] == 4  # 32 images / (4 per task x 2 tasks)
    log = next(work.glob('*/*.log')).read_text()
    assert 'Distributed launcher: slurm' in log and 'GPU number: 2' in log  # (= processes)


# ---------------------------------------------------------------- NaN on one of two processes
def test_nan_on_one_process_stops_every_process(tiny, tmp_path, jobs):
    """Sample 6 holds a NaN pixel; with 2 processes (DefaultSampler: rank 0 gets samples
    0, 2, 4, 6, ...) it is in rank 0's first batch. Both processes stop at iteration 1, the
    message names the sample and says the other rank's loss was finite; nobody waits for
    the collective timeout."""
    t0 = time.time()
    p = _dist_train(jobs, tiny['poisoned'], 2, tmp_path / 'w', tmp_path / 'log.txt')
    code = jobs.wait(p, timeout=300)
    log = _log(p)
    assert code != 0
    assert log.count('non-finite training loss at iteration 1') >= 2  # both ranks report
    assert 'rank 0: loss=nan' in log and 'sample_idx=6' in log
    assert 'rank 1: loss finite here' in log
    assert time.time() - t0 < 200
