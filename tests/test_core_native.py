"""The compiled CPU kernels (enformer_core.ops.native): built from native_kernels.c on first
use, checked against the PyTorch formulas they replace (vector and portable paths), threaded
blocks equal to one call, a clear fallback without a compiler, and in the models: the fp32
form with them equals the eval graph, the static int8 form with them equals the same form on
PyTorch ops, and the fused paths really run."""
import json
import os
import subprocess
import sys

import pytest
import torch

from enformer_core import create_model
from enformer_core.deploy import convert_for_cpu, logit_error
from enformer_core.ops import fused, native

pytestmark = pytest.mark.skipif(native._compiler() is None,
                                reason='no C compiler on this machine')


@pytest.fixture
def fallback(monkeypatch):
    """The kernels switched off, as on a machine where they cannot be built."""
    monkeypatch.setattr(native, '_lib', False)


def test_the_kernels_build_once_and_load(tmp_path, monkeypatch):
    monkeypatch.setenv('ENFORMER_CACHE', str(tmp_path))
    path = native.build()
    assert path.is_file() and tmp_path in path.parents
    stamp = path.stat().st_mtime_ns
    assert native.build() == path and path.stat().st_mtime_ns == stamp   # cached
    lib = native.load(path)
    assert lib.enf_has_avx512() in (0, 1)
    assert native.available() and 'native kernels:' in native.describe()


@pytest.mark.parametrize('channels', [1, 5, 16, 20, 33, 160, 320])
@pytest.mark.parametrize('act', [None, 'silu'])
@pytest.mark.parametrize('scalar', [False, True])
def test_layer_norm_equals_pytorch(channels, act, scalar):
    g = torch.Generator().manual_seed(channels)
    x = torch.randn(3, 7, 11, channels, generator=g) * 3 + 1
    w, b = torch.randn(channels, generator=g), torch.randn(channels, generator=g)
    ref = native.layer_norm_reference(x, w, b, 1e-6, act)
    out = native.layer_norm(x, w, b, 1e-6, act, scalar=scalar)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert (out - ref).abs().max().item() < 2e-5 * max(1.0, ref.abs().max().item())
    # uint8 at (s, z): the same values quantised; one step apart only on rounding ties
    q = native.layer_norm(x, w, b, 1e-6, act, out_qparams=(0.01, 111), scalar=scalar)
    qref = native.layer_norm_reference(x, w, b, 1e-6, act, out_qparams=(0.01, 111))
    diff = (q.int() - qref.int()).abs()
    assert q.dtype == torch.uint8 and diff.max().item() <= 1
    assert diff.float().mean().item() < 1e-3
    if channels > 1:                              # both clamps are exercised
        assert q.max().item() == 255 and (q.min().item() == 0 or act == 'silu')


def test_layer_norm_without_affine_and_its_errors():
    x = torch.randn(5, 24)
    ref = torch.nn.functional.layer_norm(x, (24,), eps=1e-5)
    assert torch.allclose(native.layer_norm(x, None, None, 1e-5), ref, atol=1e-5)
    with pytest.raises(ValueError, match="act must be None or 'silu'"):
        native.layer_norm(x, None, None, 1e-5, act='gelu')
    with pytest.raises(ValueError, match='the weight has 20 values for 24 channels'):
        native.layer_norm(x, torch.ones(20), None, 1e-5)      # never read past the end
    with pytest.raises(ValueError, match='beta has 3 values for 4 channels'):
        native.softmax_centres(torch.randn(2, 4, 5), torch.ones(4), torch.ones(3))


def test_threaded_blocks_equal_one_call(monkeypatch):
    x = torch.randn(64, 40, 40, 20)
    w, b = torch.randn(20), torch.randn(20)
    img = torch.randn(16, 3, 64, 64)
    extra = torch.randint(0, 256, (64, 64, 2), dtype=torch.uint8)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [native.layer_norm(x, w, b, 1e-6, 'silu', (0.05, 128)),
               native.quantize_planes(img, extra, (0.02, 120))]
        torch.set_num_threads(2)
        monkeypatch.setattr(native, 'PARALLEL_MIN', 1)
        two = [native.layer_norm(x, w, b, 1e-6, 'silu', (0.05, 128)),
               native.quantize_planes(img, extra, (0.02, 120))]
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(a, c) for a, c in zip(one, two))


@pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs fork')
def test_threaded_kernels_work_in_a_forked_child(monkeypatch):
    """The thread pool of the parent does not exist in a forked child (a data loader
    worker); the child makes its own instead of waiting on the parent's forever."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(native, 'PARALLEL_MIN', 1)
    x = torch.randn(64, 20)
    try:
        want = native.layer_norm(x, None, None, 1e-6)          # the parent's pool exists now
        pid = os.fork()
        if pid == 0:                                            # the child: exit 0 when right
            ok = torch.equal(native.layer_norm(x, None, None, 1e-6), want)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        torch.set_num_threads(old)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@pytest.mark.parametrize('size', [(16, 16), (37, 29)])   # whole and partial 16-pixel runs
@pytest.mark.parametrize('scalar', [False, True])
def test_quantize_planes_equals_quantise_then_concatenate(size, scalar):
    x = torch.randn(3, 3, *size) * 2
    extra = torch.randint(0, 256, (*size, 2), dtype=torch.uint8)
    out = native.quantize_planes(x, extra, (0.02, 120), scalar=scalar)
    ref = native.quantize_planes_reference(x, extra, (0.02, 120))
    assert out.shape == (3, *size, 5) and out.is_contiguous()
    assert (out.int() - ref.int()).abs().max().item() <= 1
    assert torch.equal(out[..., 3:], ref[..., 3:])
    with pytest.raises(ValueError, match=r'\(H, W, K\) uint8'):
        native.quantize_planes(x, extra[:-1], (0.02, 120))


@pytest.mark.parametrize('n', [1, 63, 64, 1000])
@pytest.mark.parametrize('scalar', [False, True])
def test_lookup_u8_is_table_indexing(n, scalar):
    g = torch.Generator().manual_seed(n)
    table = torch.randint(0, 256, (256,), dtype=torch.uint8, generator=g)
    x = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g)
    x[0] = 255
    assert torch.equal(native.lookup_u8(x, table, scalar=scalar), table[x.long()])
    with pytest.raises(ValueError, match=r'\(256,\) uint8 table'):
        native.lookup_u8(x, table[:255])


@pytest.mark.parametrize('shape', [(128, 25, 196), (3, 70, 37), (2, 1, 5)])
@pytest.mark.parametrize('scalar', [False, True])
def test_softmax_over_centres_equals_pytorch(shape, scalar):
    g = torch.Generator().manual_seed(shape[1])
    s = torch.randn(*shape, generator=g) * 3
    alpha, beta = torch.rand(shape[1], generator=g) * 4 + 1, torch.randn(shape[1], generator=g)
    y, sums = native.softmax_centres(s, alpha, beta, rowsum=True, scalar=scalar)
    y_ref, sums_ref = native.softmax_centres_reference(s, alpha, beta, rowsum=True)
    assert (y - y_ref).abs().max().item() < 3e-6
    assert torch.allclose(sums, sums_ref, rtol=1e-5, atol=1e-6)
    assert torch.allclose(native.softmax_centres(s, scalar=scalar), s.softmax(1), atol=1e-6)
    s[0, 0, 1] = float('nan')                     # a NaN column is NaN, the others are not
    y = native.softmax_centres(s, scalar=scalar)
    assert torch.isnan(y[0, :, 1]).all() and not torch.isnan(y[0, :, 0]).any()
    with pytest.raises(ValueError, match='alpha and beta together'):
        native.softmax_centres(s, alpha)


@pytest.mark.parametrize('scalar', [False, True])
def test_unit_rows_equal_pytorch(scalar):
    x = torch.randn(128, 49, 20)
    x[0, 0] = 0                                    # the norm's eps clamp
    x[1, 1, 3] = float('nan')                      # a NaN row is NaN
    out = native.unit_rows(x, 1e-12, scalar=scalar)
    ref = native.unit_rows_reference(x, 1e-12)
    assert torch.allclose(out, ref, atol=1e-6, equal_nan=True)
    assert torch.isnan(out[1, 1]).all() and (out[0, 0] == 0).all()


@pytest.mark.parametrize('shape', [(128, 9, 196), (3, 70, 37)])
@pytest.mark.parametrize('scalar', [False, True])
def test_hard_assign_equals_the_partitional_rule(shape, scalar):
    from enformer_core.ops import clustering as ops
    s = torch.randn(*shape)
    s[0, :, 0] = 1.0                               # a tie: the first centre wins
    s[1, 3, 2] = float('nan')                      # a NaN is the maximum, as torch.max
    y, count = native.hard_assign(s, scalar=scalar)
    y_ref, count_ref = native.hard_assign_reference(s)
    assert torch.allclose(y, y_ref, atol=1e-6, equal_nan=True) and torch.equal(count, count_ref)
    assert y[0, 0, 0] > 0 and (y[0, 1:, 0] == 0).all() and torch.isnan(y[1, 3, 2])
    mask = ops.hard_mask(s, training=False)        # the rule as the model applies it
    assert torch.equal(count, mask.sum(-1))
    assert torch.allclose(y, torch.sigmoid(s) * mask, atol=1e-6, equal_nan=True)


def test_clustering_steps_use_the_kernels_in_inference_only():
    from enformer_core.ops import clustering as ops
    g = torch.Generator().manual_seed(0)
    c, p = torch.randn(4, 9, 20, generator=g), torch.randn(4, 50, 20, generator=g)
    alpha, beta = torch.rand(9, generator=g) + 1, torch.randn(9, generator=g)
    want = alpha.view(1, -1, 1) * ops.cosine_similarity(c, p) + beta.view(1, -1, 1)
    with torch.no_grad():
        sim = ops.scaled_cosine_similarity(c, p, alpha, beta)
        a, denom = ops.softmax_assign(sim)
        y = ops.consensus(c, p, alpha, beta)
        hard, hard_denom = ops.hard_assign(sim)
    mask = ops.hard_mask(sim, training=False)
    assert torch.allclose(hard, torch.sigmoid(sim) * mask, atol=1e-6)
    assert torch.equal(hard_denom, mask.sum(-1) + 1)
    assert torch.allclose(sim, want, atol=1e-5)
    assert torch.allclose(a, sim.softmax(1), atol=1e-6)
    assert torch.allclose(denom, sim.softmax(1).sum(-1) + 1e-7, rtol=1e-5)
    assert torch.allclose(y, ops.consensus_reference(c, p, alpha, beta), atol=1e-5)
    c.requires_grad_()                             # under autograd: PyTorch ops, gradients
    ops.scaled_cosine_similarity(c, p, alpha, beta).softmax(1).sum().backward()
    assert c.grad is not None


def test_without_a_compiler_pytorch_ops_run_after_one_warning(tmp_path):
    """A machine without a compiler: one RuntimeWarning naming the reason, then the same
    values from PyTorch ops (a fresh process, so nothing is loaded yet)."""
    code = ('import json, warnings, torch\n'
            'from enformer_core.ops import native\n'
            'x = torch.randn(4, 20)\n'
            'with warnings.catch_warnings(record=True) as w:\n'
            '    warnings.simplefilter("always")\n'
            '    y = native.layer_norm(x, None, None, 1e-6)\n'
            '    native.layer_norm(x, None, None, 1e-6)\n'
            'print(json.dumps([[str(m.message) for m in w], native.describe(),\n'
            '                  torch.equal(y, native.layer_norm_reference(x, None, None, 1e-6))]))\n')

    def run(**env):
        out = subprocess.run([sys.executable, '-c', code], env=dict(os.environ, **env),
                             capture_output=True, text=True, timeout=300, check=True)
        return json.loads(out.stdout.splitlines()[-1])

    warned, state, equal = run(CC=str(tmp_path / 'no-such-cc'), ENFORMER_CACHE=str(tmp_path))
    assert len(warned) == 1 and equal and state == 'native kernels: off (PyTorch ops)'
    assert 'no C compiler found' in warned[0] and 'PyTorch ops run instead' in warned[0]
    warned, state, equal = run(ENFORMER_NATIVE='0', ENFORMER_CACHE=str(tmp_path))
    assert warned == [] and equal and state == 'native kernels: off (PyTorch ops)'


def test_fp32_form_with_the_kernels_equals_the_eval_graph():
    model = create_model('enformer_s').eval()
    x = torch.randn(2, 3, 64, 64)
    ref = model(x).detach()                       # autograd on: PyTorch's LayerNorm
    with torch.inference_mode():
        out = convert_for_cpu(model, 'fp32')(x)
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-5


def test_static_int8_form_runs_the_fused_paths_and_equals_pytorch_ops(monkeypatch):
    torch.manual_seed(0)
    model = create_model('enformer_s').eval()
    static = convert_for_cpu(model, 'int8', calibration=[torch.randn(4, 3, 64, 64)])
    calls = {'u8 norms': 0, 'planes': 0}
    norm, planes = native.layer_norm, native.quantize_planes

    def counting_norm(*args, **kwargs):
        out = norm(*args, **kwargs)
        calls['u8 norms'] += out.dtype == torch.uint8
        return out

    def counting_planes(*args, **kwargs):
        calls['planes'] += 1
        return planes(*args, **kwargs)

    monkeypatch.setattr(native, 'layer_norm', counting_norm)
    monkeypatch.setattr(native, 'quantize_planes', counting_planes)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        fast = static(x)
    # the stem's norm (into conv2) and every block's FFN norm (into its int8 dwconv)
    assert calls == {'u8 norms': 1 + sum(model.backbone.arch['depths']), 'planes': 1}
    assert logit_error(model, static, x)['max_rel'] < 5e-2
    # the same form on PyTorch ops: the same values, except that without the kernels the
    # FFN's SiLU is fused into fc1 instead of a table on its uint8 pre-activation (so, for
    # the comparison, no FFN quantises its pre-activation here)
    weights = [m.weight for m in static.modules() if hasattr(m, 'qweight')]
    assert sum(w.act_qparams is not None for w in weights) == sum(model.backbone.arch['depths'])
    for w in weights:
        w.act_qparams = None
    with torch.inference_mode():
        fast = static(x)
        monkeypatch.setattr(native, '_lib', False)
        slow = static(x)
    assert ((fast - slow).abs().max() / slow.abs().max()).item() < 1e-4


def test_without_the_kernels_the_int8_ffn_fuses_its_silu(monkeypatch):
    from enformer_core.ops import quantized
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 50, 40, generator=g)
    q1, q2 = quantized.Int8Weight(torch.randn(96, 40) / 7), quantized.Int8Weight(torch.randn(40, 96) / 10)
    with quantized.calibrate([q1, q2]):
        quantized.int8_mlp(x, q1, None, q2, None)
    table = quantized.int8_mlp(x, q1, None, q2, None)
    assert torch.allclose(table, quantized.int8_mlp_reference(x, q1, None, q2, None), atol=5e-2)
    monkeypatch.setattr(native, '_lib', False)
    fused_silu = quantized.int8_mlp(x, q1, None, q2, None)
    ref = quantized.int8_mlp_reference(x, q1, None, q2, None)       # its reference follows
    step = q2.input_qparams[0] * q2.dequantize().abs().sum(1).max()
    assert (fused_silu - ref).abs().max() <= step + 1e-5 and not torch.equal(fused_silu, table)


def test_training_keeps_pytorch_layer_norm():
    norm = torch.nn.LayerNorm(20)
    x = torch.randn(4, 20, requires_grad=True)
    y = fused.layer_norm(x, norm, 'silu')
    assert y.grad_fn is not None
    y.sum().backward()
    assert x.grad is not None and norm.weight.grad is not None
