"""Context Clusters, FEC and ClusterFormer: sizes, FLOPs, shapes, maths against references."""
import pytest
import torch
import torch.nn.functional as F

import enformer_core  # noqa: F401  (registers the backbones)

from enformer_core.models.clusterformer import ClusterFormer, RecurrentClusteringMixer
from enformer_core.models.context_cluster import ContextCluster, ContextClusterMixer
from enformer_core.models import create_model
from enformer_core.models.fec import FEC, ClusterPooling
from enformer_core.ops.clustering import (HAS_TORCH_SCATTER, segment_aggregate,
                                          segment_aggregate_reference)
from enformer_core.analysis import count_params

# ---------------------------------------------------------------- parameter counts (published)
CLS_PARAMS = {'coc_tiny': 5_570_584, 'coc_tiny_plain': 5_570_584, 'coc_small': 14_657_024,
              'coc_medium': 29_290_520, 'fec_small': 5_727_528, 'fec_base': 15_086_848,
              'fec_large': 29_720_344}


@pytest.mark.parametrize('name', sorted(CLS_PARAMS))
def test_classifier_params_exact(name):
    with torch.device('meta'):  # sizes only: skip the (slow) weight initialisation
        assert count_params(create_model(name)) == CLS_PARAMS[name]


@pytest.mark.parametrize('arch,proposal,expected', [
    ('small', 2, 14_145_048), ('small', 5, 14_145_048), ('small', 7, 14_145_048),
    ('medium', 2, 28_778_544), ('medium', 7, 28_778_544)])
def test_coc_dense_params_exact(arch, proposal, expected):
    with torch.device('meta'):
        m = ContextCluster(arch, proposal=proposal, out_indices=(0, 1, 2, 3),
                           gap_before_final_norm=False)
    assert count_params(m) == expected
    assert all(mix.num_centres == proposal ** 2 for mix in m.modules()
               if isinstance(mix, ContextClusterMixer))


@pytest.mark.parametrize('arch,expected', [('small', 5_407_112), ('base', 14_574_872),
                                           ('large', 29_208_368)])
@pytest.mark.parametrize('task', ['segmentation', 'detection'])
def test_fec_dense_params_exact(arch, expected, task):
    with torch.device('meta'):
        m = FEC(arch, clustering=task, out_indices=(0, 1, 2, 3), gap_before_final_norm=False)
    assert count_params(m) == expected


@pytest.mark.parametrize('name,paper', [('clusterformer_tiny', 27.85e6),
                                        ('clusterformer_small', 48.71e6)])
def test_clusterformer_params_near_paper(name, paper):
    with torch.device('meta'):
        n = count_params(create_model(name))
    assert abs(n / paper - 1) < 0.03, n


# ---------------------------------------------------------------- FLOPs (fvcore conventions)
@pytest.mark.parametrize('name,gflops', [('coc_tiny', 1.103), ('fec_small', 1.366)])
def test_flops_match_published(name, gflops):
    from mmengine.analysis import FlopAnalyzer
    model = create_model(name, use_scatter=False).eval()
    fa = FlopAnalyzer(model, torch.randn(1, 3, 224, 224))
    fa.unsupported_ops_warnings(False)
    fa.uncalled_modules_warnings(False)
    assert abs(fa.total() / 1e9 / gflops - 1) < 0.01, fa.total()


# ---------------------------------------------------------------- forward shapes / sizes
#: a narrow ClusterFormer (same code path, head dim 32) to keep the forward tests fast
CF_MINI = dict(embed_dims=[32, 64, 96, 128], depths=[1, 1, 1, 1], mlp_ratios=[4, 4, 4, 4],
               num_heads=[1, 2, 3, 4], head_dim=32)

@pytest.mark.parametrize('size', [(67, 93), (33, 40)])  # odd: regions/pooling pad
@pytest.mark.parametrize('cls,arch,kw', [
    (ContextCluster, 'tiny', {}), (ContextCluster, 'small', dict(proposal=7)),
    (FEC, 'small', dict(clustering='detection', pool_mode='local')),
    (FEC, 'small', dict(clustering='detection')), (ClusterFormer, CF_MINI, {})])
def test_dense_shapes_any_size(cls, arch, kw, size):
    m = cls(arch, out_indices=(0, 1, 2, 3), gap_before_final_norm=False, **kw).eval()
    with torch.no_grad():
        outs = m(torch.randn(1, 3, *size))
    h, w = size[0] // 4, size[1] // 4  # stem: 4x4 stride 4
    assert len(outs) == 4
    for i, (o, c) in enumerate(zip(outs, m.embed_dims)):
        assert o.shape[:2] == (1, c)
        if cls is not ClusterFormer:  # 3x3 s2 p1 reducers: ceil
            assert o.shape[2:] == (h, w), (i, o.shape)
        h, w = -(-h // 2), -(-w // 2)
        assert torch.isfinite(o).all()


@pytest.mark.parametrize('name,kw', [('coc_tiny', {}), ('fec_small', {}),
                                     ('clusterformer_tiny', dict(arch=CF_MINI))])
def test_classifier_forward_and_backward(name, kw):
    if 'arch' in kw:  # the tiny entry function with a narrow arch (speed)
        from enformer_core.models import ClusterClassifier
        model = ClusterClassifier(ClusterFormer(**kw), 10)
    else:
        model = create_model(name, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if 'conv_f' not in n]
    assert all(g is not None for g in grads)


def test_fec_conv_f_gets_no_gradient_as_published():
    m = FEC('small', out_indices=(3,))
    m(torch.randn(1, 3, 64, 64))[0].sum().backward()
    pool = m.stages[0].downsample
    assert pool.conv_f.weight.grad is None and pool.conv_v.weight.grad is not None


def test_bad_inputs_raise():
    m = ContextCluster('tiny')
    with pytest.raises(ValueError, match='input channels'):
        m(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match='4-D'):
        m(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match='at least'):
        m(torch.randn(1, 3, 16, 16))
    for cls, arch in [(ContextCluster, 'huge'), (FEC, 'tiny'), (ClusterFormer, 'base')]:
        with pytest.raises(ValueError, match='unknown'):
            cls(arch)
    with pytest.raises(ValueError, match='preset'):
        FEC('small', clustering='panoptic')
    with pytest.raises(ValueError, match='pool_mode'):
        FEC('small', pool_mode='windowed')
    with pytest.raises(ValueError, match='out_indices'):
        FEC('small', out_indices=(4,))
    with pytest.raises(ValueError, match='square'):
        ClusterFormer('tiny', num_centres=99)
    with pytest.raises(ValueError, match='proposal'):
        ContextCluster('tiny', proposal=[2, 2])


# ---------------------------------------------------------------- maths vs references
@pytest.mark.parametrize('weighted', [True, False])
def test_segment_aggregate_matches_reference(weighted):
    b, n, m, d = 6, 300, 49, 24
    values, init = torch.randn(b, n, d), torch.randn(b, m, d)
    index = torch.randint(0, m, (b, n))
    weight = torch.rand(b, n) if weighted else None
    fast = segment_aggregate(values, index, weight, init, use_scatter=False)
    ref = segment_aggregate_reference(values, index, weight, init)
    assert (fast - ref).abs().max() <= 1e-5


@pytest.mark.parametrize('weighted', [True, False])
def test_scatter_and_pure_paths_equal(weighted):
    if not HAS_TORCH_SCATTER:
        pytest.skip('torch-scatter not installed: only the pure-PyTorch path exists')
    b, n, m, d = 4, 500, 16, 32
    values, init = torch.randn(b, n, d), torch.randn(b, m, d)
    index = torch.randint(0, m, (b, n))
    weight = torch.rand(b, n) if weighted else None
    a = segment_aggregate(values, index, weight, init, use_scatter=True)
    p = segment_aggregate(values, index, weight, init, use_scatter=False)
    assert (a - p).abs().max() <= 1e-5
    mix_p = ContextClusterMixer(32, 2, 16, 4, 1, weighted=weighted, use_scatter=False).eval()
    mix_s = ContextClusterMixer(32, 2, 16, 4, 1, weighted=weighted, use_scatter=True).eval()
    mix_s.load_state_dict(mix_p.state_dict())
    x = torch.randn(2, 32, 20, 20)
    assert (mix_p(x) - mix_s(x)).abs().max() <= 1e-5


def published_mixer(mix: ContextClusterMixer, x: torch.Tensor) -> torch.Tensor:
    """The published broadcast computation (divisible sizes only), written from docs/baselines.md."""
    b, _, h, w = x.shape
    e, d = mix.num_heads, mix.head_dim
    fh, fw = mix.fold
    val = mix.v(x).reshape(b * e, d, h, w)
    pts = mix.f(x).reshape(b * e, d, h, w)
    # regions: (b f1 f2) c h w
    pts = pts.reshape(b * e, d, fh, h // fh, fw, w // fw).permute(0, 2, 4, 1, 3, 5)
    pts = pts.reshape(-1, d, h // fh, w // fw)
    val = val.reshape(b * e, d, fh, h // fh, fw, w // fw).permute(0, 2, 4, 1, 3, 5)
    val = val.reshape(-1, d, h // fh, w // fw)
    centres = F.adaptive_avg_pool2d(pts, mix.proposal).flatten(2).transpose(1, 2)
    vcent = F.adaptive_avg_pool2d(val, mix.proposal).flatten(2).transpose(1, 2)
    p = pts.flatten(2).transpose(1, 2)
    v = val.flatten(2).transpose(1, 2)
    cos = F.normalize(centres, dim=-1) @ F.normalize(p, dim=-1).transpose(1, 2)
    sim = torch.sigmoid(mix.sim_beta + mix.sim_alpha * cos)
    mask = torch.zeros_like(sim).scatter_(1, sim.argmax(1, keepdim=True), 1.0)
    sim = sim * mask
    wts = sim if mix.weighted else mask
    g = ((v.unsqueeze(1) * wts.unsqueeze(-1)).sum(2) + vcent) / (wts.sum(-1, keepdim=True) + 1)
    out = (g.unsqueeze(2) * sim.unsqueeze(-1)).sum(1)  # (B', N, d)
    rh, rw = h // fh, w // fw
    out = out.transpose(1, 2).reshape(b * e, fh, fw, d, rh, rw).permute(0, 3, 1, 4, 2, 5)
    return mix.proj(out.reshape(b, e * d, h, w))


@pytest.mark.parametrize('proposal,fold,weighted', [(2, 4, True), (5, 2, True), (3, 1, False),
                                                     (7, 2, False)])
def test_mixer_matches_published_broadcast(proposal, fold, weighted):
    torch.manual_seed(1)
    mix = ContextClusterMixer(16, 2, 8, proposal, fold, weighted=weighted).eval()
    with torch.no_grad():
        mix.sim_alpha.fill_(1.7)
        mix.sim_beta.fill_(-0.3)
        x = torch.randn(2, 16, 28, 28)
        assert (mix(x) - published_mixer(mix, x)).abs().max() <= 1e-5


def test_padding_masks_padded_points():
    """An odd-size map equals the reference on the same content: padded points never join a
    cluster and never move a centre (checked region by region with a 1-region fold)."""
    torch.manual_seed(2)
    mix = ContextClusterMixer(16, 2, 8, 2, 2).eval()
    single = ContextClusterMixer(16, 2, 8, 2, 1).eval()
    single.load_state_dict(mix.state_dict())
    x = torch.randn(1, 16, 9, 9)  # padded to 10x10: regions 5x5, the last row/col padding
    with torch.no_grad():
        out = mix(x)
        # the top-left region has no padding: it must equal clustering that 5x5 crop alone
        assert (out[..., :5, :5] - single(x[..., :5, :5])).abs().max() <= 1e-5
        # the bottom-right region holds 4x4 real pixels: equal to clustering them alone,
        # with masked centres pooled over the real pixels only
        ref = _masked_region_reference(single, x[..., 5:, 5:])
        assert (out[..., 5:, 5:] - ref).abs().max() <= 1e-5
        assert torch.isfinite(mix(torch.randn(2, 16, 13, 7))).all()


def _masked_region_reference(mix, x):
    """Cluster a 4x4 region padded to 5x5 by hand: centres average real pixels only."""
    b, _, h, w = x.shape
    e, d = mix.num_heads, mix.head_dim
    pts = mix.f(x).reshape(b * e, d, h, w)
    val = mix.v(x).reshape(b * e, d, h, w)
    mask = F.pad(torch.ones(1, 1, h, w), (0, 1, 0, 1))
    pp, vp = F.pad(pts, (0, 1, 0, 1)), F.pad(val, (0, 1, 0, 1))
    den = F.adaptive_avg_pool2d(mask, 2)
    c = (F.adaptive_avg_pool2d(pp, 2) / den).flatten(2).transpose(1, 2)
    vc = (F.adaptive_avg_pool2d(vp, 2) / den).flatten(2).transpose(1, 2)
    p = pts.flatten(2).transpose(1, 2)
    v = val.flatten(2).transpose(1, 2)
    sim = torch.sigmoid(mix.sim_beta + mix.sim_alpha *
                        (F.normalize(c, dim=-1) @ F.normalize(p, dim=-1).transpose(1, 2)))
    sim = sim * torch.zeros_like(sim).scatter_(1, sim.argmax(1, keepdim=True), 1.0)
    g = ((v.unsqueeze(1) * sim.unsqueeze(-1)).sum(2) + vc) / (sim.sum(-1, keepdim=True) + 1)
    out = (g.unsqueeze(2) * sim.unsqueeze(-1)).sum(1).transpose(1, 2).reshape(b, e * d, h, w)
    return mix.proj(out)


def test_cluster_pooling_global_matches_reference():
    torch.manual_seed(3)
    pool = ClusterPooling(8, 16).eval()
    x = torch.randn(2, 8, 12, 10)
    with torch.no_grad():
        f, v = pool.conv_f(x), pool.conv_v(x)
        c = F.adaptive_avg_pool2d(f, (6, 5)).flatten(2).transpose(1, 2)
        vc = F.adaptive_avg_pool2d(v, (6, 5)).flatten(2).transpose(1, 2)
        pts, vals = f.flatten(2).transpose(1, 2), v.flatten(2).transpose(1, 2)
        sim = F.normalize(c, dim=-1) @ F.normalize(pts, dim=-1).transpose(1, 2)
        mask = torch.zeros_like(sim).scatter_(1, sim.argmax(1, keepdim=True), 1.0)
        pooled = (mask @ vals + vc) / (mask.sum(-1, keepdim=True) + 1)
        ref = pool.conv_skip(x) + pool.norm(pooled.transpose(1, 2).reshape(2, 16, 6, 5))
        assert (pool(x) - ref).abs().max() <= 1e-5


def test_cluster_pooling_local_window_covering_map_equals_global():
    """With a window wide enough to see every cell, local pooling is global pooling."""
    torch.manual_seed(4)
    glob = ClusterPooling(8, 16, mode='global').eval()
    loc = ClusterPooling(8, 16, mode='local', window=9).eval()
    loc.load_state_dict(glob.state_dict())
    with torch.no_grad():
        for size in [(8, 8), (7, 9)]:
            x = torch.randn(2, 8, *size)
            assert (glob(x) - loc(x)).abs().max() <= 1e-5


def test_cluster_pooling_region_fold_shapes():
    pool = ClusterPooling(8, 16, fold=2).eval()
    for size in [(12, 12), (9, 13)]:
        out = pool(torch.randn(1, 8, *size))
        assert out.shape == (1, 16, -(-size[0] // 2), -(-size[1] // 2))


# ---------------------------------------------------------------- ClusterFormer maths
def test_clusterformer_mixer_matches_equations():
    torch.manual_seed(5)
    mix = RecurrentClusteringMixer(64, 2, 32, num_centres=16, iterations=3).eval()
    x = torch.randn(1, 64, 6, 7)
    with torch.no_grad():
        pts = x.flatten(2).transpose(1, 2)[0]  # (N, C)
        k, v = mix.k(pts), mix.v(pts)
        c = mix.init_ffn(F.adaptive_avg_pool2d(x, 4).flatten(2).transpose(1, 2)[0])  # Eq. 5
        out = torch.zeros(42, 64)
        heads = []
        for _ in range(3):
            q = mix.q(c)
            new = []
            for hd in range(2):
                s = slice(32 * hd, 32 * hd + 32)
                resp = (q[:, s] @ k[:, s].T / 32 ** 0.5).softmax(0)  # E-step over K
                resp = resp / resp.sum(1, keepdim=True)               # weighted mean
                new.append(resp @ v[:, s])                              # M-step
            c = torch.cat(new, 1)
        for hd in range(2):
            s = slice(32 * hd, 32 * hd + 32)
            sim = F.normalize(c[:, s], dim=1) @ F.normalize(v[:, s], dim=1).T  # (K, N)
            out[:, s] = sim.T @ c[:, s] / 16                                  # Eq. 6
        ref = out.T.reshape(1, 64, 6, 7)
        assert (mix(x) - ref).abs().max() <= 1e-5


def test_clusterformer_iterations_change_output():
    torch.manual_seed(6)
    a = RecurrentClusteringMixer(64, 2, 32, 16, iterations=1).eval()
    b = RecurrentClusteringMixer(64, 2, 32, 16, iterations=3).eval()
    with torch.no_grad():  # sharper responsibilities than the 0.02 init gives
        for lin in (a.q, a.k):
            lin.weight.normal_(0, 0.5)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        assert (a(x) - b(x)).abs().max() > 1e-4


# ---------------------------------------------------------------- determinism
@pytest.mark.parametrize('name', ['coc_tiny', 'fec_small'])
def test_hard_assignment_deterministic(name):
    model = create_model(name, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)
    model.train()  # hard argmax in training too (no Gumbel noise)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_frozen_stages_and_with_cp():
    m = ContextCluster('tiny', frozen_stages=2, with_cp=True, out_indices=(3,))
    m.train()
    assert not any(p.requires_grad for p in m.stem.parameters())
    assert not any(p.requires_grad for p in m.stages[1].parameters())
    assert all(p.requires_grad for p in m.stages[2].parameters())
    out = m(torch.randn(1, 3, 64, 64))[0]
    out.sum().backward()
    assert m.stages[3].blocks[0].mlp.fc1.weight.grad is not None
