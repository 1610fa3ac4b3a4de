"""Throughput / training-step benchmark (issue 3's name): see tools/analysis/benchmark.py.

    python tools/benchmark.py enformer_s enformer_b enformer_l --forms train-graph deploy --train
"""
import importlib.util
import os
import sys

_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'analysis', 'benchmark.py')


def main(argv=None):
    spec = importlib.util.spec_from_file_location('enformer_tools_benchmark', _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


if __name__ == '__main__':
    main(sys.argv[1:])
