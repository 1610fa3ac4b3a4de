"""EnFormer backbone: published numbers, determinism, re-parameterisation, options, errors."""
import pytest
import torch
import torch.nn as nn

from enformer_core import create_model
from enformer_core.models import EnFormer
from enformer_core.models.layers import ReparamDWConv
from enformer_core.analysis import count_params

# docs/architecture.md, "Numbers": (params as trained, after reparameterize, paper "M" = fused / 2**20,
# fvcore GMACs at 224^2)
PUBLISHED = {
    's': (8_531_184, 8_506_224, 8.11, 1.137),
    'b': (15_636_184, 15_553_624, 14.83, 2.522),
    'l': (31_180_868, 30_816_964, 29.39, 4.832),
}
DENSE = {  # 1e6 units, trained graph: detection, segmentation
    's': (8.23, 8.23), 'b': (15.13, 15.14), 'l': (30.69, 30.69)}


def _randomise_bn_and_scales(model: nn.Module) -> None:
    """Give BatchNorms and layer scales non-trivial values so fusion is really tested."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    for name, p in model.named_parameters():
        if name.endswith('gamma'):
            p.data.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.1)


@pytest.mark.parametrize('arch', ['s', 'b', 'l'])
def test_param_counts_match_published(arch):
    trained, fused, paper_m, _ = PUBLISHED[arch]
    model = create_model(f'enformer_{arch}')
    assert count_params(model) == trained
    model.reparameterize()
    assert count_params(model) == fused
    assert round(count_params(model) / 2 ** 20, 2) == paper_m
    deploy = create_model(f'enformer_{arch}', deploy=True)
    assert count_params(deploy) == fused
    assert deploy.state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize('arch', ['s', 'b', 'l'])
def test_flops_match_published(arch):
    from mmengine.analysis import FlopAnalyzer
    model = create_model(f'enformer_{arch}').eval()
    fa = FlopAnalyzer(model, torch.randn(1, 3, 224, 224))
    fa.unsupported_ops_warnings(False)
    fa.uncalled_modules_warnings(False)
    gmacs = fa.total() / 1e9
    assert abs(gmacs - PUBLISHED[arch][3]) / PUBLISHED[arch][3] < 0.01


@pytest.mark.parametrize('arch', ['s', 'b', 'l'])
def test_dense_param_counts(arch):
    det = EnFormer(arch, clustering='detection', out_indices=(0, 1, 2, 3),
                   gap_before_final_norm=False)
    seg = EnFormer(arch, clustering='segmentation', out_indices=(0, 1, 2, 3),
                   gap_before_final_norm=False)
    assert round(count_params(det) / 1e6, 2) == DENSE[arch][0]
    assert round(count_params(seg) / 1e6, 2) == DENSE[arch][1]


def test_dense_feature_shapes_at_detection_size():
    model = EnFormer('s', clustering='detection', out_indices=(0, 1, 2, 3),
                     gap_before_final_norm=False).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 800, 1216))
    assert [tuple(o.shape[1:]) for o in outs] == [(40, 200, 304), (80, 100, 152),
                                                   (160, 50, 76), (320, 25, 38)]
    # each output is LayerNorm'ed over channels
    assert torch.allclose(outs[3].mean(1), torch.zeros(1, 25, 38), atol=1e-4)


def test_eval_is_deterministic():
    model = create_model('enformer_s').eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)
    assert a.shape == (2, 1000)


def test_training_partitional_is_stochastic_but_eval_is_not():
    model = EnFormer('s').train()
    x = torch.randn(1, 3, 64, 64)
    # make the outputs depend visibly on the clustering branch
    for n, p in model.named_parameters():
        if n.endswith('mixer.proj_out.gamma'):
            p.data.fill_(1.0)
    with torch.no_grad():
        a, b = model(x)[0], model(x)[0]
    assert not torch.equal(a, b), 'Gumbel sampling should make training passes differ'
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x)[0], model(x)[0])


@pytest.mark.parametrize('kernel', [3, 5, 7])
def test_reparam_dwconv_fuses_exactly(kernel):
    m = ReparamDWConv(16, kernel)
    _randomise_bn_and_scales(m)
    m.eval()
    x = torch.randn(2, 16, 13, 11, dtype=torch.float64)
    m.double()
    ref = m(x)
    m.reparameterize()
    assert m.deploy and not hasattr(m, 'bn_out')
    out = m(x)
    assert (out - ref).abs().max() / ref.abs().max() < 1e-12


@pytest.mark.parametrize('kernel, dilation, size', [(3, 1, (2, 2)), (3, 2, (3, 4)),
                                                   (5, 1, (2, 3)), (7, 1, (4, 4))])
def test_small_map_depthwise_conv_gradcheck_and_equals_conv(kernel, dilation, size):
    """Maps smaller than the (dilated) kernel take the fast weight-gradient path: float64
    gradcheck, and the same values and gradients as nn.Conv2d (fp32, channels-last input)."""
    from enformer_core.models.layers import _SmallMapDepthwiseConv, depthwise_conv2d
    pad = dilation * (kernel - 1) // 2
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, kernel, kernel, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: _SmallMapDepthwiseConv.apply(x, w, b, pad, dilation), (x, w, b))
    conv = torch.nn.Conv2d(8, 8, kernel, padding=pad, dilation=dilation, groups=8, bias=False)
    x = torch.randn(4, *size, 8).permute(0, 3, 1, 2).requires_grad_()  # channels-last strides
    ref = conv(x)
    g_ref = torch.autograd.grad(ref.square().sum(), [x, conv.weight])
    out = depthwise_conv2d(x, conv)
    g_out = torch.autograd.grad(out.square().sum(), [x, conv.weight])
    assert out.grad_fn is not None and 'SmallMapDepthwiseConv' in type(out.grad_fn).__name__
    assert torch.allclose(out, ref, atol=1e-6)
    for a, b_ in zip(g_out, g_ref):
        assert torch.allclose(a, b_, rtol=1e-4, atol=1e-5)
    # a map at least as large as the kernel keeps PyTorch's convolution
    big = torch.randn(1, 8, 16, 16)
    assert 'SmallMapDepthwiseConv' not in type(depthwise_conv2d(big, conv).grad_fn).__name__


@pytest.mark.parametrize('arch', ['s', 'l'])
def test_reparameterized_model_equals_unfused(arch):
    model = create_model(f'enformer_{arch}').eval()
    _randomise_bn_and_scales(model)
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        ref = model(x)
        fused = model.reparameterize()(x)
    rel = (fused - ref).abs().max() / ref.abs().max()
    assert rel < 1e-5
    # a deploy=True model loads the fused weights and gives the same output
    deploy = create_model(f'enformer_{arch}', deploy=True).eval()
    deploy.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(deploy(x), fused, atol=1e-6)


def test_train_returns_self_frozen_stages_and_norm_eval():
    model = EnFormer('s', frozen_stages=2, norm_eval=True)
    assert model.train() is model
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert not any(p.requires_grad for p in model.stages[1].parameters())
    assert all(p.requires_grad for p in model.stages[2].parameters())
    assert not model.stages[0].training and model.stages[2].training
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    # the frozen part does not move in a training step
    before = model.stem.conv1.weight.clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model(torch.randn(2, 3, 64, 64))[0].sum().backward()
    opt.step()
    assert torch.equal(before, model.stem.conv1.weight)


def test_with_cp_really_checkpoints_and_keeps_gradients(monkeypatch):
    import torch.utils.checkpoint as cp
    x = torch.randn(2, 3, 64, 64)
    ref_model = EnFormer('s', gumbel=False).train()
    ref_model(x)[0].sum().backward()
    ref = {n: p.grad.clone() for n, p in ref_model.named_parameters() if p.grad is not None}

    calls = []
    original = cp.checkpoint

    def counting(fn, *args, **kwargs):
        calls.append(fn)
        return original(fn, *args, **kwargs)

    monkeypatch.setattr(cp, 'checkpoint', counting)
    model = EnFormer('s', gumbel=False, with_cp=True).train()
    model.load_state_dict(ref_model.state_dict())
    model(x)[0].sum().backward()
    assert len(calls) == sum(model.arch['depths'])
    for n, p in model.named_parameters():
        if n in ref:
            assert torch.allclose(p.grad, ref[n], atol=1e-6, rtol=1e-4), n


def test_custom_ensemble_is_a_config_change():
    three = [dict(type='FuzzyClustering', grid=3), dict(type='PartitionalClustering', grid=2),
             dict(type='ProbabilisticClustering', grid=2)]
    model = EnFormer('s', clustering=dict(agents=[8, 8, None, None],
                                          base_clusterings=[three] * 4)).eval()
    mixer = model.stages[0].blocks[0].mixer
    assert len(mixer.clusterings) == 3 and mixer.consensus.num_centres == 9 + 4 + 4
    assert mixer.proj_in.out_features == 7 * 20
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64))[0].shape == (1, 320)

def test_clamp_agents_clusters_small_maps_directly_and_leaves_large_maps_alone():
    torch.manual_seed(0)
    ls = dict(layer_scale_init_value=1.0)            # let the mixers matter
    ref = EnFormer('s', **ls).eval()                 # published: always pool to 14x14 agents
    clamped = EnFormer('s', clamp_agents=True, **ls).eval()
    clamped.load_state_dict(ref.state_dict())        # same parameters
    all_pixels = EnFormer('s', clustering=dict(
        agents=[14, None, None, None],
        base_clusterings=EnFormer.clustering_presets['classification']['base_clusterings']),
        **ls).eval()
    all_pixels.load_state_dict(ref.state_dict())
    mixer1 = clamped.stages[1].blocks[0].mixer
    assert mixer1.agent_grid(8, 8) is None           # 8x8 < 14x14: every pixel
    assert mixer1.agent_grid(28, 10) == (14, 10)     # clamped per axis
    assert mixer1.agent_grid(28, 28) == (14, 14)
    assert ref.stages[1].blocks[0].mixer.agent_grid(8, 8) == (14, 14)
    with torch.no_grad():
        small = torch.randn(2, 3, 64, 64)            # stage 0: 16x16 > 14 agents, stage 1: 8x8
        out = clamped(small)[0]
        torch.testing.assert_close(out, all_pixels(small)[0], rtol=1e-5, atol=1e-5)
        assert (out - ref(small)[0]).abs().max() > 1e-4  # the published model pools 8x8 up
        large = torch.randn(1, 3, 128, 128)          # every map >= its grid: identical
        torch.testing.assert_close(clamped(large)[0], ref(large)[0], rtol=0, atol=0)



@pytest.mark.parametrize('kwargs, message', [
    (dict(arch='xl'), 'unknown EnFormer arch'),
    (dict(out_indices=(4,)), 'out_indices'),
    (dict(frozen_stages=5), 'frozen_stages'),
    (dict(clustering='panoptic'), 'unknown EnFormer clustering preset'),
    (dict(arch=dict(embed_dims=[8]), ), 'missing'),
])
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EnFormer(**kwargs)


@pytest.mark.parametrize('shape, message', [
    ((2, 1, 64, 64), 'input channels'),
    ((3, 64, 64), '4-D'),
    ((1, 3, 16, 64), 'at least 32x32'),
])
def test_bad_inputs_raise_clear_errors(shape, message):
    model = EnFormer('s').eval()
    with pytest.raises(ValueError, match=message):
        model(torch.randn(*shape))


def test_unknown_model_name():
    with pytest.raises(ValueError, match='unknown model'):
        create_model('enformer_xxl')
