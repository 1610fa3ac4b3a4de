"""Compiled CPU kernels for the inference forms (``native_kernels.c``), with PyTorch fallbacks.

* :func:`layer_norm`: ``act(LayerNorm(x))`` over the last dim of a float32 map, written as
  float32, or as uint8 at the next int8 layer's static input quantisation (one pass instead
  of LayerNorm, SiLU and a quantise pass).  PyTorch's LayerNorm costs about 30 ns per row
  whatever the width: most of the time on EnFormer-S's narrow maps (20-80 channels).
* :func:`quantize_planes`: the image with its coordinate channels appended, quantised
  straight into the stem's uint8 channels-last input (no float32 concatenation).
* :func:`lookup_u8`: a 256-entry table on a uint8 tensor (the static int8 FFN's SiLU
  between ``fc1``'s uint8 pre-activation and ``fc2``'s uint8 input, :func:`silu_table`).
* :func:`unit_rows`, :func:`softmax_centres`, :func:`hard_assign`: the clustering's unit
  vectors, its softmax over the centres (with the similarity's scale and offset, and the
  fuzzy rule's sums) and the partitional rule in evaluation, one pass each.

Measurements: ``docs/benchmarks.md``, "What makes it fast".  The C file is built once per
machine, on first use, with ``$CC`` (else ``cc``) ``-O3 -march=native`` into
``~/.cache/enformer/native/<key>/`` (``$ENFORMER_CACHE`` replaces ``~/.cache/enformer``) and
loaded with ``ctypes``: no torch headers, no install-time build, about a second.  The key
hashes the source, the compiler, its flags and the CPU's model and flags, so a home folder
shared by different CPUs (a cluster) never loads code built for instructions a machine
lacks.  Without a compiler, or with ``ENFORMER_NATIVE=0``, PyTorch ops run (the
``*_reference`` functions: equal up to float rounding and one uint8 step on rounding ties;
the static int8 FFN then fuses its SiLU into ``fc1``), after one warning that says why.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

SOURCE = Path(__file__).with_name('native_kernels.c')
FLAGS = ('-O3', '-std=c99', '-shared', '-fPIC')
#: elements below which one thread does the whole call (a thread hand-off costs more)
PARALLEL_MIN = 1 << 18
_ACTS = (None, 'silu')
_lib = None          # the loaded library; False once it is off or failed (fallbacks run)
_pool: Optional[ThreadPoolExecutor] = None


def _forget_pool() -> None:
    global _pool
    _pool = None


if hasattr(os, 'register_at_fork'):  # a forked child has none of the parent's pool threads
    os.register_at_fork(after_in_child=_forget_pool)


def cache_dir() -> Path:
    root = os.environ.get('ENFORMER_CACHE') or Path.home() / '.cache' / 'enformer'
    return Path(root) / 'native'


def _compiler() -> Optional[str]:
    cc = os.environ.get('CC')
    if cc:
        return shutil.which(cc)
    return shutil.which('cc') or shutil.which('gcc') or shutil.which('clang')


def _cpu_signature() -> str:
    """The CPU's model name and instruction-set flags (what ``-march=native`` targets)."""
    try:
        with open('/proc/cpuinfo') as f:
            lines = [ln for ln in f if ln.startswith(('model name', 'flags', 'Features'))]
        return ''.join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _compile(cc: str, flags: Tuple[str, ...], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.so', dir=out.parent)
    os.close(fd)
    try:
        subprocess.run([cc, *flags, str(SOURCE), '-o', tmp, '-lm'], check=True,
                       capture_output=True, text=True, timeout=120)
        os.replace(tmp, out)            # atomic: concurrent first uses never see half a file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def build(extra_flags: Tuple[str, ...] = ('-march=native',)) -> Path:
    """Compile ``native_kernels.c`` unless the cache holds it; the library's path.  Raises
    ``RuntimeError`` (with the compiler's message) when there is no compiler or it fails."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError(f'no C compiler found ($CC={os.environ.get("CC")!r}; install gcc '
                           f'or clang, or set $CC)')
    flags = FLAGS + tuple(extra_flags)
    try:
        version = subprocess.run([cc, '--version'], capture_output=True, text=True,
                                 timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise RuntimeError(f'{cc} --version failed: {err}') from err
    key = hashlib.sha256('\0'.join([SOURCE.read_text(), cc, version, platform.machine(),
                                    _cpu_signature(), *flags]).encode()).hexdigest()[:16]
    out = cache_dir() / key / 'enformer_kernels.so'
    if not out.exists():
        try:
            _compile(cc, flags, out)
        except subprocess.CalledProcessError as err:
            raise RuntimeError(f'{cc} could not compile {SOURCE.name}: '
                               f'{(err.stderr or "").strip()[:2000]}') from err
        except (OSError, subprocess.SubprocessError) as err:
            raise RuntimeError(f'{cc} could not compile {SOURCE.name}: {err}') from err
    return out


#: each C function's arguments (``p`` pointer, ``i64``/``i32`` integers, ``f32`` float); its
#: ``*_scalar`` twin (the portable path, for tests) takes the same
_SIGNATURES = {
    'enf_layer_norm': 'p i64 i64 p p f32 i32 p p f32 f32',
    'enf_quantize_planes': 'p i64 i64 i64 p i64 f32 f32 p',
    'enf_unit_rows': 'p i64 i64 f32 p',
    'enf_softmax_centres': 'p i64 i64 i64 p p p p',
    'enf_hard_assign': 'p i64 i64 i64 p p',
    'enf_lookup_u8': 'p i64 p p',
}
_CTYPES = dict(p=ctypes.c_void_p, i64=ctypes.c_int64, i32=ctypes.c_int, f32=ctypes.c_float)


def load(path: Path) -> ctypes.CDLL:
    """The library at ``path``, its functions' signatures declared."""
    lib = ctypes.CDLL(str(path))
    for name, args in _SIGNATURES.items():
        for fn in (getattr(lib, name), getattr(lib, name + '_scalar')):
            fn.argtypes, fn.restype = [_CTYPES[a] for a in args.split()], None
    lib.enf_has_avx512.restype = ctypes.c_int
    return lib


def library() -> Optional[ctypes.CDLL]:
    """The kernels, built and loaded on the first call; ``None`` when they are off
    (``ENFORMER_NATIVE=0``) or could not be built (warned once, with the reason)."""
    global _lib
    if _lib is None:
        if os.environ.get('ENFORMER_NATIVE', '1') == '0':
            _lib = False
        else:
            try:
                try:
                    _lib = load(build())
                except RuntimeError:        # a compiler without -march=native
                    _lib = load(build(()))
            except (RuntimeError, OSError) as err:
                warnings.warn(f'enformer_core: the compiled CPU kernels are unavailable, so '
                              f'PyTorch ops run instead (slower, same values): {err}',
                              RuntimeWarning, stacklevel=2)
                _lib = False
    return _lib or None


def _kernel(name: str, scalar: bool):
    """The C function ``name`` (its portable ``*_scalar`` twin for ``scalar=True``)."""
    return getattr(library(), name + '_scalar' if scalar else name)


def available() -> bool:
    return library() is not None


def describe() -> str:
    """One line for logs and benchmark headers: what runs the kernels."""
    lib = library()
    if lib is None:
        return 'native kernels: off (PyTorch ops)'
    return f'native kernels: {"AVX-512" if lib.enf_has_avx512() else "portable C"}'


def supports(x: torch.Tensor) -> bool:
    """Whether the kernels run on ``x``: float32, CPU, contiguous, non-empty, no autograd
    graph through it, and the library is available."""
    return (x.device.type == 'cpu' and x.dtype == torch.float32 and x.is_contiguous()
            and x.numel() > 0 and x.shape[-1] > 0
            and not (torch.is_grad_enabled() and x.requires_grad) and available())


def _in_blocks(n: int, work: int, run: Callable[[int, int], None]) -> None:
    """``run(start, stop)`` over ``0 .. n``: in one call, or in one block per torch thread
    when ``work`` (elements) is large; ctypes releases the GIL, so blocks run in parallel."""
    threads = min(torch.get_num_threads(), n)
    if threads <= 1 or work < PARALLEL_MIN:
        run(0, n)
        return
    global _pool
    if _pool is None or _pool._max_workers < threads:
        _pool = ThreadPoolExecutor(threads, thread_name_prefix='enformer-native')
    bounds = [n * k // threads for k in range(threads + 1)]
    for f in [_pool.submit(run, lo, hi) for lo, hi in zip(bounds, bounds[1:])]:
        f.result()


def layer_norm_reference(x: torch.Tensor, weight: Optional[torch.Tensor],
                         bias: Optional[torch.Tensor], eps: float, act: Optional[str] = None,
                         out_qparams: Optional[Tuple[float, int]] = None) -> torch.Tensor:
    """:func:`layer_norm` in PyTorch ops (the fallback, and the tests' reference)."""
    y = F.layer_norm(x, x.shape[-1:], weight, bias, eps)
    y = F.silu(y) if act == 'silu' else y
    return y if out_qparams is None else _quantize(y, *out_qparams)


def _quantize(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    from .quantized import quantize_u8_reference     # (quantized imports this module)
    return quantize_u8_reference(x, scale, zero_point)


def _affine(t: Optional[torch.Tensor], c: int, fill: float, what: str) -> torch.Tensor:
    """``t`` as a contiguous float32 ``(c,)`` vector (``fill`` where ``None``); a wrong size is
    an error here, before C code would read past its end."""
    if t is None:
        return torch.full((c,), fill)
    if t.numel() != c:
        raise ValueError(f'{what} has {t.numel()} values for {c} channels')
    return t.detach().float().contiguous()


def layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
               eps: float, act: Optional[str] = None,
               out_qparams: Optional[Tuple[float, int]] = None,
               scalar: bool = False) -> torch.Tensor:
    """``act(LayerNorm(x))`` over ``x``'s last dim ``C`` (``act``: ``None`` or ``'silu'``;
    ``weight``/``bias``: ``(C,)`` or ``None``), float32 of ``x``'s shape, or, for
    ``out_qparams = (s, z)``, uint8 ``clamp(round(y / s) + z, 0, 255)``.  ``scalar=True``
    runs the kernel's portable path instead of its AVX-512 one (for tests)."""
    if act not in _ACTS:
        raise ValueError(f"act must be None or 'silu', got {act!r}")
    if not supports(x):
        return layer_norm_reference(x, weight, bias, eps, act, out_qparams)
    c = x.shape[-1]
    rows = x.numel() // c
    w, b = _affine(weight, c, 1.0, 'the weight'), _affine(bias, c, 0.0, 'the bias')
    quantised = out_qparams is not None
    out = torch.empty(x.shape, dtype=torch.uint8 if quantised else torch.float32)
    inv_scale, zp = (1.0 / out_qparams[0], float(out_qparams[1])) if quantised else (0.0, 0.0)
    fn = _kernel('enf_layer_norm', scalar)
    item = out.element_size()

    def run(start: int, stop: int) -> None:
        dst = out.data_ptr() + start * c * item
        fn(x.data_ptr() + start * c * 4, stop - start, c, w.data_ptr(), b.data_ptr(), eps,
           int(act == 'silu'), None if quantised else dst, dst if quantised else None,
           inv_scale, zp)

    _in_blocks(rows, x.numel(), run)
    return out


def quantize_planes_reference(x: torch.Tensor, extra: torch.Tensor,
                              qparams: Tuple[float, int]) -> torch.Tensor:
    """:func:`quantize_planes` in PyTorch ops."""
    q = _quantize(x.float(), *qparams).permute(0, 2, 3, 1)
    return torch.cat([q, extra.unsqueeze(0).expand(x.shape[0], -1, -1, -1)], dim=-1)


def quantize_planes(x: torch.Tensor, extra: torch.Tensor, qparams: Tuple[float, int],
                    scalar: bool = False) -> torch.Tensor:
    """The ``(B, C, H, W)`` float32 image ``x`` quantised at ``qparams = (s, z)`` with the
    ``(H, W, K)`` uint8 channels ``extra`` (already quantised at the same ``(s, z)``)
    appended: a contiguous ``(B, H, W, C + K)`` uint8 map, the stem's int8 conv input."""
    if x.dim() != 4 or extra.dim() != 3 or tuple(extra.shape[:2]) != tuple(x.shape[2:]) \
            or extra.dtype != torch.uint8:
        raise ValueError(f'quantize_planes expects a (B, C, H, W) image and (H, W, K) uint8 '
                         f'extra channels, got {tuple(x.shape)} and {tuple(extra.shape)} '
                         f'{extra.dtype}')
    if not supports(x):
        return quantize_planes_reference(x, extra, qparams)
    b, c, h, w = x.shape
    k, hw = extra.shape[2], h * w
    extra = extra.contiguous()
    out = torch.empty(b, h, w, c + k, dtype=torch.uint8)
    fn = _kernel('enf_quantize_planes', scalar)

    def run(start: int, stop: int) -> None:   # images start .. stop-1
        fn(x.data_ptr() + start * c * hw * 4, stop - start, c, hw, extra.data_ptr(), k,
           1.0 / qparams[0], float(qparams[1]), out.data_ptr() + start * hw * (c + k))

    _in_blocks(b, x.numel(), run)
    return out


def unit_rows_reference(x: torch.Tensor, eps: float) -> torch.Tensor:
    """:func:`unit_rows` in PyTorch ops."""
    return x / x.pow(2).sum(-1, keepdim=True).sqrt().clamp_min(eps)


def unit_rows(x: torch.Tensor, eps: float = 1e-12, scalar: bool = False) -> torch.Tensor:
    """``x / max(||x||, eps)`` along the last dim (float32, any leading shape)."""
    if not supports(x):
        return unit_rows_reference(x, eps)
    d = x.shape[-1]
    rows = x.numel() // d
    out = torch.empty_like(x)
    fn = _kernel('enf_unit_rows', scalar)

    def run(start: int, stop: int) -> None:
        fn(x.data_ptr() + start * d * 4, stop - start, d, eps, out.data_ptr() + start * d * 4)

    _in_blocks(rows, x.numel(), run)
    return out


def softmax_centres_reference(s: torch.Tensor, alpha: Optional[torch.Tensor] = None,
                              beta: Optional[torch.Tensor] = None, rowsum: bool = False):
    """:func:`softmax_centres` in PyTorch ops."""
    g = s if alpha is None else s * alpha.view(1, -1, 1) + beta.view(1, -1, 1)
    y = g.softmax(dim=1)
    return (y, y.sum(-1)) if rowsum else y


def softmax_centres(s: torch.Tensor, alpha: Optional[torch.Tensor] = None,
                    beta: Optional[torch.Tensor] = None, rowsum: bool = False,
                    scalar: bool = False):
    """``softmax(alpha[m] S[:, m, :] + beta[m])`` over dim 1 of a ``(b, M, N)`` float32
    tensor (``alpha``/``beta`` ``(M,)``, both or neither); with ``rowsum=True`` also its
    sums over ``n``, ``(b, M)``."""
    if (alpha is None) != (beta is None):
        raise ValueError('softmax_centres takes alpha and beta together, or neither')
    if s.dim() != 3 or not supports(s):
        return softmax_centres_reference(s, alpha, beta, rowsum)
    b, m, n = s.shape
    if alpha is not None:
        alpha, beta = _affine(alpha, m, 1.0, 'alpha'), _affine(beta, m, 0.0, 'beta')
    out = torch.empty_like(s)
    sums = torch.empty(b, m) if rowsum else None
    fn = _kernel('enf_softmax_centres', scalar)
    a_ptr = None if alpha is None else alpha.data_ptr()
    b_ptr = None if beta is None else beta.data_ptr()

    def run(start: int, stop: int) -> None:
        fn(s.data_ptr() + start * m * n * 4, stop - start, m, n, a_ptr, b_ptr,
           out.data_ptr() + start * m * n * 4,
           None if sums is None else sums.data_ptr() + start * m * 4)

    _in_blocks(b, s.numel(), run)
    return (out, sums) if rowsum else out


def hard_assign_reference(s: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`hard_assign` in PyTorch ops."""
    mask = torch.zeros_like(s).scatter_(1, s.max(dim=1, keepdim=True).indices, 1.0)
    return torch.sigmoid(s) * mask, mask.sum(-1)


def hard_assign(s: torch.Tensor, scalar: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """The partitional rule in evaluation on ``(b, M, N)`` similarities: ``sigmoid(S)`` at
    each point's best centre (the first maximum over dim 1; a NaN counts as the maximum, as
    ``torch.max``) and 0 elsewhere, and ``(b, M)`` the number of points of each centre."""
    if s.dim() != 3 or not supports(s):
        return hard_assign_reference(s)
    b, m, n = s.shape
    out, count = torch.empty_like(s), torch.empty(b, m)
    fn = _kernel('enf_hard_assign', scalar)

    def run(start: int, stop: int) -> None:
        fn(s.data_ptr() + start * m * n * 4, stop - start, m, n,
           out.data_ptr() + start * m * n * 4, count.data_ptr() + start * m * 4)

    _in_blocks(b, s.numel(), run)
    return out, count


@lru_cache(maxsize=1024)
def silu_table(in_qparams: Tuple[float, int], out_qparams: Tuple[float, int]) -> torch.Tensor:
    """``(256,)`` uint8 for :func:`lookup_u8`: each code ``q`` of a pre-activation quantised
    at ``in_qparams = (s_z, z_z)`` -> the code of ``silu(s_z (q - z_z))`` at ``out_qparams``
    (the static int8 FFN's SiLU between fc1 and fc2; cached)."""
    s, zp = in_qparams
    return _quantize(F.silu((torch.arange(256, dtype=torch.float32) - zp) * s), *out_qparams)


def lookup_u8(x: torch.Tensor, table: torch.Tensor, scalar: bool = False) -> torch.Tensor:
    """``table[x]`` for a uint8 tensor ``x`` and a ``(256,)`` uint8 ``table``."""
    if table.shape != (256,) or table.dtype != torch.uint8 or x.dtype != torch.uint8:
        raise ValueError(f'lookup_u8 takes a uint8 tensor and a (256,) uint8 table, got '
                         f'{x.dtype} and {tuple(table.shape)} {table.dtype}')
    if not (x.device.type == 'cpu' and x.is_contiguous() and x.numel() and available()):
        return table[x.long()]
    out = torch.empty_like(x)
    table = table.contiguous()
    fn = _kernel('enf_lookup_u8', scalar)
    fn(x.data_ptr(), x.numel(), table.data_ptr(), out.data_ptr())
    return out
