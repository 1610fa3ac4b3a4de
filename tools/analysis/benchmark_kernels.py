"""Time the compiled CPU kernels (enformer_core.ops.native) against the PyTorch ops they
replace, on EnFormer-S's shapes (batch 32, 224x224), in one process, interleaved.

    python tools/analysis/benchmark_kernels.py [--threads 1] [--iters 20] [--batch 32]

Each row is one step of EnFormer-S's forward: the kernel's time, the PyTorch ops' time and
their ratio, and the largest difference between the two outputs (float32 steps) or the
share of uint8 codes that differ (by one step, on rounding ties).  docs/benchmarks.md has a
run of it.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--threads', type=int, default=1, help='torch CPU threads (default 1)')
    p.add_argument('--iters', type=int, default=20, help='timed calls per step and side')
    p.add_argument('--batch', type=int, default=32)
    return p.parse_args(argv)


def cases(batch: int):
    """(step, kernel call, PyTorch call) on EnFormer-S's shapes at 224x224."""
    import torch
    import torch.nn.functional as F

    from enformer_core.ops import native
    from enformer_core.ops.quantized import quantize_u8
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    def norm(shape, act, q, what):
        x, w, b = rand(*shape) * 3 + 1, rand(shape[-1]), rand(shape[-1])

        def torch_ops():
            y = F.layer_norm(x, shape[-1:], w, b, 1e-6)
            y = F.silu(y) if act else y
            return y if q is None else quantize_u8(y, *q)
        return (f'LayerNorm{" + SiLU" if act else ""}{" -> uint8" if q else ""}, {what}',
                lambda: native.layer_norm(x, w, b, 1e-6, act, q), torch_ops)

    img, grid = rand(batch, 3, 224, 224), rand(224, 224, 2)
    extra = quantize_u8(grid, 0.02, 120)
    cat = lambda: quantize_u8(torch.cat([img.permute(0, 2, 3, 1), grid.expand(batch, -1, -1, -1)],  # noqa
                                        -1).contiguous(), 0.02, 120)
    pts, sim = rand(batch * 4, 196, 20), rand(batch * 4, 25, 196)
    alpha, beta = rand(25).abs() + 1, rand(25)
    sim9 = rand(batch * 4, 9, 196)

    def hard_ops():                      # the eval path it replaces (one_hot_argmax & co.)
        from enformer_core.ops.clustering import one_hot_argmax
        mask = one_hot_argmax(sim9)
        return torch.sigmoid(sim9) * mask, mask.sum(-1)
    zq = torch.randint(0, 256, (batch * 196, 640), dtype=torch.uint8, generator=g)
    table = torch.randint(0, 256, (256,), dtype=torch.uint8, generator=g)
    deq = lambda: quantize_u8(F.silu((zq.float() - 128) * 0.05), 0.02, 20)  # noqa
    return [
        norm((batch, 112, 112, 20), 'silu', (0.05, 128), 'stem, 112x112x20'),
        norm((batch, 56, 56, 40), None, None, 'stage 0, 56x56x40'),
        norm((batch, 56, 56, 40), None, (0.05, 128), 'stage 0, 56x56x40'),
        norm((batch, 14, 14, 160), None, None, 'stage 2, 14x14x160'),
        ('image + coordinates -> uint8, 224x224x5',
         lambda: native.quantize_planes(img, extra, (0.02, 120)), cat),
        ('unit vectors, 196 points x 20, 4 heads',
         lambda: native.unit_rows(pts), lambda: native.unit_rows_reference(pts, 1e-12)),
        ('softmax over 25 centres + sums, scale/offset',
         lambda: native.softmax_centres(sim, alpha, beta, rowsum=True),
         lambda: native.softmax_centres_reference(sim, alpha, beta, rowsum=True)),
        ('partitional assignment, 9 centres',
         lambda: native.hard_assign(sim9), hard_ops),
        ('SiLU uint8 -> uint8 (table vs float ops), stage 2 fc1',
         lambda: native.lookup_u8(zq, table), deq),
    ]


def _time(fn, iters: int) -> float:
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters * 1e3


def _difference(a, b) -> str:
    a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
    import torch
    if a.dtype == torch.uint8:
        return f'{(a != b).float().mean().item() * 100:.3f} % codes'
    return f'{(a - b).abs().max().item():.1e}'


def main(argv=None):
    args = parse_args(argv)
    import torch

    from enformer_core.ops import native
    from enformer_core.utils.malloc import tune_malloc
    torch.set_num_threads(args.threads)
    tune_malloc()                        # (as benchmark.py: no page faults per allocation)
    if not native.available():
        raise SystemExit(f'{native.describe()}: nothing to compare (ENFORMER_NATIVE=0, or no '
                         f'C compiler)')
    print(f'{native.describe()} | {args.threads} thread(s) | batch {args.batch} | '
          f'{args.iters} calls per side, interleaved in halves', flush=True)
    print(f'{"step":<58} {"kernel ms":>10} {"PyTorch ms":>11} {"x":>6}  difference')
    with torch.inference_mode():
        for name, kernel, ops in cases(args.batch):
            kernel(), ops()                          # warm-up (allocations, first build)
            half = max(args.iters // 2, 1)
            tk, to = _time(kernel, half), _time(ops, half)
            tk, to = tk + _time(kernel, half), to + _time(ops, half)
            # (the table row's PyTorch side recomputes the table's maths per element)
            diff = '-' if 'table' in name else _difference(kernel(), ops())
            print(f'{name:<58} {tk / 2:>10.3f} {to / 2:>11.3f} {to / tk:>6.2f}  {diff}',
                  flush=True)


if __name__ == '__main__':
    main()
