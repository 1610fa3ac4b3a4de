"""Fast paths (enformer_core.ops.fused) and CPU deployment forms (enformer_core.deploy).

The fused paths must compute what the plain modules compute: eval-mode outputs within 1e-5
of the unfused graph, every new autograd Function passes a float64 gradcheck, and the fp32
Functions match plain autograd.  bf16/int8 forms are compared with fp32 on random weights of
the published layout (their accuracy effect; docs/benchmarks.md)."""
import pytest
import torch
import torch.nn.functional as F

from enformer_core import create_model, load_checkpoint
from enformer_core.deploy import agreement, convert_for_cpu, logit_error
from enformer_core.ops import clustering as ops
from enformer_core.ops import fused


def _rand(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def _lively(model):
    """Non-trivial BatchNorm statistics, layer scales and similarity scales."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('gamma'):
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.1)
            elif 'sim_' in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
        for name, b in model.named_buffers():
            if name.endswith('running_mean'):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith('running_var'):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return model


@pytest.fixture(scope='module')
def published_s(published_state):
    """EnFormer-S with random N(0, 1) weights of the published layout (positive variances)."""
    model = create_model('enformer_s')
    load_checkpoint(model, published_state('enformer_s'))
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith('running_var'):
                b.abs_().add_(0.1)
    return model.eval()


# ----------------------------------------------------------------------------- gradchecks
def test_linear_silu_linear_gradcheck_and_plain_autograd():
    args = [_rand(*s).requires_grad_() for s in [(2, 3, 4, 5), (7, 5), (7,), (5, 7), (5,)]]
    assert torch.autograd.gradcheck(fused.LinearSiLULinear.apply, args)
    assert torch.autograd.gradcheck(fused._Linear.apply, args[:3])
    # fp32 (the oneDNN matmuls) against plain autograd
    a32 = [a.detach().float().requires_grad_() for a in args]
    out = fused.LinearSiLULinear.apply(*a32)
    ref = F.linear(F.silu(F.linear(*a32[:3])), a32[3], a32[4])
    g = torch.randn_like(out)
    for x, y in zip(torch.autograd.grad((out * g).sum(), a32),
                    torch.autograd.grad((ref * g).sum(), a32)):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-5)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_cosine_similarity_function_gradcheck_and_values():
    c, p = _rand(2, 5, 4).requires_grad_(), _rand(2, 7, 4).requires_grad_()
    assert torch.autograd.gradcheck(ops.cosine_similarity, (c, p))
    with torch.no_grad():  # the composed maths (no autograd) gives the same values
        plain = ops.cosine_similarity(c, p)
    assert torch.allclose(ops.cosine_similarity(c, p), plain, atol=1e-12)
    # a clamped (zero) norm: finite gradients, those of x / eps
    z = torch.zeros(1, 1, 4, dtype=torch.float64, requires_grad=True)
    grad = torch.autograd.grad(ops.cosine_similarity(z, p[:1]).sum(), z)[0]
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize('channels_last', [False, True])
def test_adaptive_pool_saves_nothing_and_gradchecks(channels_last):
    x = _rand(2, 3, 11, 9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fused.adaptive_avg_pool_nchw(t, (4, 3)), (x,))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fused.adaptive_avg_pool_nchw(x, (4, 3))
    assert not saved


# ----------------------------------------------------------------------------- eval graph
@pytest.mark.parametrize('arch', ['s', 'b', 'l'])   # depthwise kernels 3, 3/5, 3/5/7
def test_fused_eval_graph_equals_unfused(arch, monkeypatch):
    """inference_mode (folded BN branches and layer scales, oneDNN calls with fused SiLU and
    residual adds, the FFN in row blocks, pool-then-project) == the eval graph under autograd
    (BN branches, layer scales and SiLU as separate ops)."""
    model = _lively(create_model(f'enformer_{arch}')).eval()
    x = torch.randn(2, 3, 64, 96)
    ref = model(x).detach()                      # autograd on: the plain, unfused graph
    monkeypatch.setattr(fused, 'MLP_ROWS', 64)   # force the row-block FFN on a small input
    with torch.inference_mode():
        out = model(x)
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-5


def test_train_graph_ffn_is_one_node_with_the_plain_gradients():
    """The FFN under autograd is one LinearSiLULinear node (input and pre-activation saved)
    whose gradients equal those of the plain module composition (fp32, oneDNN matmuls)."""
    torch.manual_seed(0)
    ffn = _lively(create_model('enformer_s')).backbone.stages[1].blocks[0].ffn.train()
    h = torch.randn(2, 12, 12, 80, requires_grad=True)

    def plain(t):
        y = ffn.dwconv(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return ffn.fc2.fc(F.silu(ffn.fc1(y))) * ffn.fc2.gamma

    params = [h] + list(ffn.parameters())
    out, ref = ffn(h), plain(h)
    assert 'LinearSiLULinear' in type(out.grad_fn).__name__
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(out)
    ours = torch.autograd.grad((out * g).sum(), params)
    plain_grads = torch.autograd.grad((ref * g).sum(), params)
    scale = max(b.abs().max().item() for b in plain_grads)
    for a, b in zip(ours, plain_grads):   # relative to the largest gradient (BN biases
        assert (a - b).abs().max() <= 1e-5 * scale   # before a BN have ~0 gradients)


# ----------------------------------------------------------------------------- deployment
def test_convert_for_cpu_fp32_is_the_eval_graph(published_s):
    x = torch.randn(2, 3, 64, 64)
    fp32 = convert_for_cpu(published_s, 'fp32')
    err = logit_error(published_s, fp32, x)
    assert err['max_rel'] < 1e-5 and err['top1_agreement'] == 1.0
    # the input model is untouched (not re-parameterised)
    assert hasattr(published_s.backbone.stages[0].blocks[0].ffn.dwconv, 'bn')


def test_bf16_close_to_fp32(published_s):
    """bf16 (8 mantissa bits): logits within 2 % of the largest fp32 logit."""
    x = torch.randn(4, 3, 96, 96)
    bf16 = convert_for_cpu(published_s, 'bf16')
    assert next(bf16.parameters()).dtype == torch.bfloat16
    with torch.inference_mode():
        assert bf16(x).dtype == torch.float32
    err = logit_error(published_s, bf16, x)
    assert err['max_rel'] < 2e-2, err


def test_int8_close_to_fp32(published_s):
    """int8 dynamic quantisation (torchao): logits within 5 % of the largest fp32 logit."""
    pytest.importorskip('torchao')
    x = torch.randn(2, 3, 96, 96)
    int8 = convert_for_cpu(published_s, 'int8')
    fc1 = int8.module.backbone.stages[2].blocks[0].ffn.fc1.weight
    assert type(fc1).__name__ != 'Parameter'         # really quantised
    assert type(int8.module.head.fc.weight).__name__ == 'Parameter'  # the head stays
    err = logit_error(published_s, int8, x)
    assert err['max_rel'] < 5e-2, err


def test_agreement_over_a_loader(published_s):
    torch.manual_seed(0)
    loader = [(torch.randn(2, 3, 64, 64), torch.tensor([1, 2])) for _ in range(2)]
    same = agreement(published_s, published_s, loader)
    assert same['images'] == 4 and same['top1_agreement'] == 1.0
    assert same['max_abs_logit_diff'] == 0.0 and same['top1_fp32'] == same['top1_x']
    res = agreement(published_s, convert_for_cpu(published_s, 'bf16'), loader, max_batches=1)
    assert res['images'] == 2 and 0.0 <= res['top1_agreement'] <= 1.0
    unlabelled = agreement(published_s, published_s, [x for x, _ in loader])
    assert 'top1_fp32' not in unlabelled


def test_bad_dtype():
    with pytest.raises(ValueError, match='dtype'):
        convert_for_cpu(torch.nn.Linear(2, 2), 'fp8')


def test_autocast_training_step_uses_the_plain_ops():
    """Under autocast the memory-lean Functions and oneDNN calls stand aside (they would mix
    dtypes): a bf16-autocast training step runs and gives finite gradients."""
    model = create_model('enformer_s').train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = model(torch.randn(2, 3, 64, 64)).float().logsumexp(-1).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_tune_malloc_is_accepted_by_glibc():
    import platform
    from enformer_core.deploy import tune_malloc
    ok = tune_malloc()
    if platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc':
        assert ok is True
    else:
        assert ok in (True, False)


def test_empty_batch_through_the_fused_paths():
    """A batch of 0 images: forward in every mode and a backward (oneDNN rejects empty
    reductions; the fused paths fall back to the plain ops there)."""
    model = create_model('enformer_s')
    x = torch.randn(0, 3, 64, 64)
    with torch.inference_mode():
        assert model.eval()(x).shape == (0, 1000)
    out = model.train()(x)
    out.sum().backward()
    assert out.shape == (0, 1000)


@pytest.mark.parametrize('kernel,dilation,size', [(3, 2, 7), (7, 1, 8), (3, 3, 4)])
def test_depthwise_conv_function_gradcheck_and_conv_gradients(kernel, dilation, size):
    """The input gradient as the conv with the flipped kernel: float64 gradcheck, and equal
    to nn.Conv2d's gradients in fp32 (channels-last, as in the FFN)."""
    from enformer_core.models.layers import _DepthwiseConv, depthwise_conv2d
    p = dilation * (kernel - 1) // 2
    x = _rand(2, 3, size, size + 1).contiguous(memory_format=torch.channels_last)
    w, b = _rand(3, 1, kernel, kernel), _rand(3)
    args = tuple(t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda *a: _DepthwiseConv.apply(*a, p, dilation), args)
    conv = torch.nn.Conv2d(8, 8, kernel, padding=p, dilation=dilation, groups=8)
    xf = torch.randn(2, 8, 16, 16).contiguous(memory_format=torch.channels_last)
    xf.requires_grad_()
    out = depthwise_conv2d(xf, conv)
    assert type(out.grad_fn).__name__ == '_DepthwiseConvBackward'
    g = torch.randn_like(out)
    ours = torch.autograd.grad((out * g).sum(), [xf, *conv.parameters()])
    ref = torch.autograd.grad((conv(xf) * g).sum(), [xf, *conv.parameters()])
    for a, r in zip(ours, ref):
        assert torch.allclose(a, r, rtol=1e-5, atol=1e-5)
