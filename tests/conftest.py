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
