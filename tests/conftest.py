"""Shared test set-up: repository root on sys.path, deterministic seeds, few threads.

Test files are named ``test_<area>_*.py`` and imported in importlib mode (see pyproject),
because the mmsegmentation wheel installs a top-level ``tests`` package.
"""
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# OMP_NUM_THREADS (the Makefile sets 2) decides; oversubscribing a shared machine is far
# slower than one thread
torch.set_num_threads(max(1, int(os.environ.get('OMP_NUM_THREADS', '1'))))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope='session')
def published_state():
    """A random state dict with the keys and shapes of an official checkpoint, read from
    ``tests/data/published_layouts/<name>_state_dict.txt`` (``'enformer_s'``,
    ``'enformer_s_fused'``, ``'coc_tiny'``, ``'coc_small'``, ``'fec_small'``)."""
    import re

    def make(name: str):
        path = ROOT / 'tests' / 'data' / 'published_layouts' / (
            name.replace('_fused', '') + '_state_dict' + ('_fused' if '_fused' in name else '')
            + '.txt')
        g = torch.Generator().manual_seed(0)
        state = {}
        for line in path.read_text().splitlines():
            if not line.strip() or line.startswith('#'):
                continue
            key, shape = line.split('\t')
            dims = tuple(int(d) for d in re.findall(r'\d+', shape))
            state[key] = (torch.randint(0, 100, dims, generator=g)
                          if key.endswith('num_batches_tracked') else torch.randn(dims, generator=g))
        return state
    return make


@pytest.fixture(scope='session')
def load_tool():
    """Import a command-line script of the repository (``'tools/....py'``) as a module, so
    tests call its ``main(argv)`` in-process."""
    import importlib.util

    def load(rel: str):
        spec = importlib.util.spec_from_file_location(
            'enformer_' + rel.replace('/', '_')[:-3], ROOT / rel)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    return load


@pytest.fixture
def one_thread():
    """One intra-op thread for many-small-kernel tests: as fast, and immune to
    over-subscribed cores (2 spinning OpenMP threads on a busy 2-core machine made a
    training step ~10x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
