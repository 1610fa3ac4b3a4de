"""The backbone-only install: in a fresh virtual environment with nothing but torch (the same
version and source as the main one) and numpy, our wheel installs without fetching anything
else, and the models, create_model, published-layout conversion and loading work, while
mmengine / mmcv / the toolboxes are not importable and a toolbox feature says what to install.

The environment is cached under ``~/.cache/enformer/venvs/`` (``$ENFORMER_CACHE``), keyed by
the torch version and Python ABI: the first run installs torch (about a minute from pip's local
cache), later runs only rebuild and reinstall our wheel."""
import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TORCH = torch.__version__.split('+')[0]
ABI = f'cp{sys.version_info[0]}{sys.version_info[1]}'

SCRIPT = r'''
import argparse, importlib.util, sys, tempfile, os
import torch
import enformer_core
from enformer_core import create_model, list_models, load_checkpoint
from enformer_core.models.enformer import ENFORMER_LAYOUT

assert enformer_core.__file__.startswith(sys.prefix), enformer_core.__file__  # the wheel
for mod in ('mmengine', 'mmcv', 'mmpretrain', 'mmdet', 'mmseg', 'cv2', 'PIL', 'torchao'):
    assert importlib.util.find_spec(mod) is None, f'{mod} is importable'
assert not enformer_core.HAS_MMENGINE
names = list_models()
assert len(names) >= 11, names
x = torch.randn(2, 3, 64, 64)
with torch.no_grad():
    for name in names:
        assert create_model(name).eval()(x).shape == (2, 1000), name
    maps = create_model('enformer_s', features_only=True).eval()(x)
    assert [m.shape[1] for m in maps] == [40, 80, 160, 320]

# a published-layout (timm) file: converted and loaded strictly, same outputs
src = create_model('enformer_s').eval()
published, unmatched = ENFORMER_LAYOUT.to_published(src.state_dict())
assert not unmatched
path = os.path.join(tempfile.mkdtemp(), 'enformer_small.pth.tar')
torch.save({'state_dict': published, 'arch': 'enformer_small',
            'args': argparse.Namespace(model='enformer_small')}, path)
dst = create_model('enformer_s', pretrained=path).eval()
with torch.no_grad():
    assert torch.equal(src(x), dst(x))
report = load_checkpoint(create_model('enformer_s'), path)
assert report.fits and report.converted_from == 'published EnFormer', str(report)

# the CPU deployment forms need torch only (int8: oneDNN's kernels inside torch); the
# package data ships: the C kernels' source (built here on first use) and the class names
from enformer_core.deploy import convert_for_cpu, logit_error
for dtype in ('bf16', 'int8'):
    err = logit_error(dst, convert_for_cpu(dst, dtype), x)
    assert err['max_rel'] < 5e-2, (dtype, err)
from enformer_core.ops import native
assert native.SOURCE.is_file() and native.available(), native.describe()
from enformer_core.hub import label_names
assert len(label_names()) == 1000

# toolbox features name what is missing, when they are used
try:
    enformer_core.datasets.FashionMNISTIdx
except ImportError as exc:
    assert "enformer_core[mm]" in str(exc), exc
else:
    raise AssertionError('FashionMNISTIdx without mmengine')
from enformer_core.registry import MODELS
try:
    MODELS.build(dict(type='EnFormer'))
except ImportError as exc:
    assert 'MMEngine' in str(exc), exc
print('BACKBONE-ONLY OK', len(names), 'models')
'''


def _run(cmd, **kw):
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert out.returncode == 0, f'{cmd}:\n{(out.stdout + out.stderr)[-3000:]}'
    return out.stdout


def _clean_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(('PYTHON', 'VIRTUAL_ENV'))}
    env['OMP_NUM_THREADS'] = '1'
    return env


def _bare_venv() -> Path:
    """A venv with torch (this version, pip's usual source) and numpy, cached and shared."""
    cache = Path(os.environ.get('ENFORMER_CACHE', Path.home() / '.cache' / 'enformer'))
    venv = cache / 'venvs' / f'backbone-only-torch{TORCH}-{ABI}'
    stamp = venv / '.ready'
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / '.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)           # one builder at a time
        if not stamp.is_file():
            tmp = venv.with_name(venv.name + '.building')
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(venv, ignore_errors=True)
            base = getattr(sys, '_base_executable', sys.executable)
            _run([base, '-m', 'venv', tmp], env=_clean_env(), timeout=120)
            _run([tmp / 'bin' / 'python', '-m', 'pip', 'install', '-q', f'torch=={TORCH}',
                  'numpy'], env=_clean_env(), timeout=900)
            tmp.rename(venv)                       # python finds its venv by pyvenv.cfg
            stamp.write_text(TORCH)
    return venv


@pytest.mark.slow
def test_backbone_only_install_needs_torch_and_numpy_only(tmp_path):
    venv = _bare_venv()
    py = venv / 'bin' / 'python'
    # our wheel, built from a copy of the sources by the main environment
    src = tmp_path / 'src'
    src.mkdir()
    shutil.copytree(ROOT / 'enformer_core', src / 'enformer_core',
                    ignore=shutil.ignore_patterns('__pycache__'))
    for name in ('pyproject.toml', 'README.md', 'LICENSE'):
        if (ROOT / name).is_file():
            shutil.copy(ROOT / name, src / name)
    _run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation',
          '-w', tmp_path / 'wheel', src], env=_clean_env(), timeout=300)
    [wheel] = (tmp_path / 'wheel').glob('enformer_core-*.whl')
    # --no-index: installing it must not need anything that is not there already
    subprocess.run([py, '-m', 'pip', 'uninstall', '-q', '-y', 'enformer_core'],
                   env=_clean_env(), capture_output=True)
    _run([py, '-m', 'pip', 'install', '-q', '--no-index', wheel], env=_clean_env(), timeout=300)
    meta = _run([py, '-m', 'pip', 'show', 'enformer_core'], env=_clean_env())
    requires = [line for line in meta.splitlines() if line.startswith('Requires:')][0]
    assert sorted(r.strip() for r in requires[9:].split(',')) == ['numpy', 'torch']
    (tmp_path / 'check.py').write_text(SCRIPT)
    out = _run([py, '-I', tmp_path / 'check.py'], cwd=tmp_path, env=_clean_env(),
               timeout=600)
    assert 'BACKBONE-ONLY OK' in out
