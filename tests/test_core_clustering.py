"""Clustering ops: float64 gradcheck, fast vs reference paths, assignment rules, memory shape."""
import pytest
import torch
import torch.nn.functional as F

from enformer_core.models.clustering import (BaseClustering, ConsensusAggregation,
                                             EnsembleClustering, build_clustering, pool_tokens)
from enformer_core.ops import clustering as ops


def _rand(*shape):
    return torch.randn(*shape, dtype=torch.float64)


@pytest.mark.parametrize('rule', ['fuzzy', 'possibilistic', 'probabilistic', 'partitional'])
def test_base_clustering_gradcheck(rule):
    module = build_clustering(dict(type=f'{rule.capitalize()}Clustering', grid=(2, 2)),
                              head_dim=3).double().eval()
    assert module.rule == rule
    with torch.no_grad():  # non-trivial per-centre parameters
        module.sim_alpha.copy_(torch.rand(4, dtype=torch.float64) + 0.5)
        module.sim_beta.copy_(torch.randn(4, dtype=torch.float64) * 0.1)
        if rule == 'probabilistic':
            module.log_vars.copy_(torch.randn(4, 3, dtype=torch.float64) * 0.2)
    # initial key/value centres (b, M, d) and the clustered key/value points (b, N, d)
    inputs = tuple(t.requires_grad_() for t in (_rand(2, 4, 3), _rand(2, 4, 3), _rand(2, 16, 3),
                                                _rand(2, 16, 3)))
    params = [p for p in module.parameters()]

    def fn(k, v, p, q, *ps):
        return module(k, v, p, q)

    assert torch.autograd.gradcheck(fn, inputs + tuple(params), eps=1e-6, atol=1e-5)


def test_centre_bias_option_gradcheck():
    module = build_clustering(dict(type='FuzzyClustering', grid=2, centre_bias=True),
                              head_dim=3).double().eval()
    inputs = tuple(t.requires_grad_() for t in (_rand(1, 4, 3), _rand(1, 4, 3), _rand(1, 16, 3),
                                                _rand(1, 16, 3)))
    assert torch.autograd.gradcheck(lambda *a: module(*a), inputs, eps=1e-6, atol=1e-5)


def test_consensus_gradcheck_and_reference():
    centres, queries = _rand(2, 5, 4).requires_grad_(), _rand(2, 7, 4).requires_grad_()
    alpha = (torch.rand(5, dtype=torch.float64) + 0.5).requires_grad_()
    beta = (torch.randn(5, dtype=torch.float64) * 0.1).requires_grad_()
    assert torch.autograd.gradcheck(ops.consensus, (centres, queries, alpha, beta), eps=1e-6,
                                    atol=1e-5)
    fast = ops.consensus(centres, queries, alpha, beta)
    ref = ops.consensus_reference(centres, queries, alpha, beta)
    assert torch.allclose(fast, ref, atol=1e-12)


def test_assignment_rules_against_definitions():
    sim = torch.randn(2, 4, 6)
    a, den = ops.softmax_assign(sim)
    assert torch.allclose(a.sum(1), torch.ones(2, 6))
    assert torch.allclose(den, a.sum(-1) + 1e-7)
    a, den = ops.sigmoid_assign(sim)
    assert torch.allclose(a, torch.sigmoid(sim))
    assert torch.allclose(den, a.sum(-1) + 1e-7)
    a, den = ops.hard_assign(sim, training=False)
    hard = F.one_hot(sim.argmax(1), 4).transpose(1, 2).float()
    assert torch.equal(a, torch.sigmoid(sim) * hard)
    assert torch.equal(den, hard.sum(-1) + 1)
    # training: straight-through Gumbel gives one-hot masks that can differ from argmax
    torch.manual_seed(0)
    masks = [ops.hard_mask(sim, training=True) for _ in range(20)]
    assert all(torch.equal(m.sum(1), torch.ones(2, 6)) for m in masks)
    assert any(not torch.equal(m, hard) for m in masks)
    # each rule is one subclass; the base class alone is no clustering
    with pytest.raises(ValueError, match='unknown base clustering'):
        build_clustering(dict(type='SpectralClustering', grid=2), head_dim=3)
    with pytest.raises(TypeError, match='abstract'):
        BaseClustering(grid=2, head_dim=3)


def test_gumbel_noise_follows_the_gumbel_max_law():
    """argmax(S + G) must be distributed as softmax(S) (what F.gumbel_softmax samples)."""
    torch.manual_seed(0)
    logits = torch.tensor([1.5, 0.0, -1.0, 0.5])
    sim = logits.view(1, 4, 1).expand(1, 4, 200_000).contiguous()
    g = ops.gumbel_noise(sim)
    assert torch.isfinite(g).all()
    freq = torch.bincount((sim + g).argmax(1).flatten(), minlength=4).double() / sim.shape[-1]
    assert torch.allclose(freq, logits.double().softmax(0), atol=5e-3)
    # mean and variance of a standard Gumbel: Euler-Mascheroni, pi^2 / 6
    assert abs(g.mean().item() - 0.5772) < 0.01 and abs(g.var().item() - 1.6449) < 0.02


def test_straight_through_hard_mask_forward_and_gradient():
    sim = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 5, 7, dtype=torch.float64)
    torch.manual_seed(1)
    mask = ops.hard_mask(sim, training=True)
    (mask * w).sum().backward()
    torch.manual_seed(1)  # same draws: the gradient is the one of softmax(S + G)
    soft = (sim + ops.gumbel_noise(sim)).softmax(1)
    grad = torch.autograd.grad((soft * w).sum(), sim)[0]
    assert torch.equal(mask.detach(), F.one_hot(soft.argmax(1), 5).transpose(1, 2).double())
    assert torch.allclose(sim.grad, grad, atol=1e-12)
    # ties pick the first maximum (as argmax does)
    tie = torch.zeros(1, 3, 2)
    assert torch.equal(ops.argmax_centres(tie), torch.zeros(1, 1, 2, dtype=torch.long))


def test_eval_one_hot_equals_argmax_with_ties_and_nan():
    """The eval mask (``x == amax`` where every column has one maximum) equals the one-hot
    of argmax, also for exact ties (first maximum) and NaN columns (the index path)."""
    def reference(x):
        return F.one_hot(x.argmax(1), x.shape[1]).transpose(1, 2).to(x.dtype)
    x = torch.randn(4, 9, 50)
    x[0, :, 3] = 0.7                     # a column of equal similarities (a blank image)
    x[1, 2, 5] = x[1, 6, 5] = x[1, :, 5].max() + 1      # two maxima, not first
    x[2, :, 7] = float('nan')
    for case in (x, x[:, :, 8:], x.double(), x.transpose(1, 2).contiguous().transpose(1, 2)):
        out = ops.hard_mask(case, training=False)
        ref = reference(case.nan_to_num(nan=0.0)) if torch.isnan(case).any() else \
            reference(case)
        keep = ~torch.isnan(case).any(1, keepdim=True).expand_as(case)
        assert out.dtype == case.dtype and torch.equal(out[keep], ref[keep])
    assert torch.equal(ops.one_hot_argmax(x[3:]), reference(x[3:]))     # the fast path
    assert (ops.one_hot_argmax(x[2:3]).sum(1) == 1).all()   # NaN columns: still one-hot


def test_unit_vectors_match_f_normalize():
    x = _rand(2, 6, 5)
    x[0, 0] = 0.0  # a zero vector stays zero, as with F.normalize
    assert torch.allclose(ops.unit_vectors(x), F.normalize(x, dim=-1), atol=1e-15)
    y = _rand(2, 6, 5).transpose(1, 2).requires_grad_()  # strided input
    assert torch.autograd.gradcheck(ops.unit_vectors, (y,), eps=1e-6, atol=1e-6)
    gx = torch.autograd.grad(ops.unit_vectors(y).pow(3).sum(), y)[0]
    gy = torch.autograd.grad(F.normalize(y, dim=-1).pow(3).sum(), y)[0]
    assert torch.allclose(gx, gy, atol=1e-12)


@pytest.mark.parametrize('size,grid', [((16, 16), (14, 14)), ((13, 9), (5, 7)), ((4, 4), (4, 4)),
                                       ((4, 4), (3, 3)), ((2, 3), (5, 5))])
def test_pool_tokens_is_adaptive_average_pooling(size, grid):
    x = torch.randn(2, *size, 6)  # channels-last
    ref = F.adaptive_avg_pool2d(x.permute(0, 3, 1, 2).contiguous(), grid).flatten(2)
    assert torch.allclose(pool_tokens(x, grid), ref.transpose(1, 2), atol=1e-6)


def _reference_ensemble(mixer: EnsembleClustering, x: torch.Tensor) -> torch.Tensor:
    """The mixer written plainly from docs/architecture.md (per-chunk head folding, NCHW pooling,
    F.normalize, F.interpolate), evaluation mode: the fast path must compute the same."""
    b, hh, ww, _ = x.shape
    h, d = mixer.num_heads, mixer.head_dim
    grid = mixer.agent_grid(hh, ww)

    def fold(t):  # (B, H, W, h*d) -> (B*h, d, H, W)
        return t.reshape(b, hh, ww, h, d).permute(0, 3, 4, 1, 2).reshape(b * h, d, hh, ww)

    def tokens(t, size):
        return F.adaptive_avg_pool2d(t, size).flatten(2).transpose(1, 2)

    def cos(c, p):
        return F.normalize(c, dim=-1) @ F.normalize(p, dim=-1).transpose(1, 2)

    chunks = [fold(c) for c in mixer.proj_in(x).split(mixer.inner_dim, dim=-1)]
    pts = [tokens(c, grid) if grid else c.flatten(2).transpose(1, 2) for c in chunks]
    zs = []
    for k, cl in enumerate(mixer.clusterings):
        s = cl.sim_alpha.view(1, -1, 1) * cos(tokens(chunks[1 + 2 * k], cl.grid), pts[1 + 2 * k]) \
            + cl.sim_beta.view(1, -1, 1)
        if cl.rule == 'fuzzy':
            a = s.softmax(1)
            den = a.sum(-1) + 1e-7
        else:  # partitional, evaluation: one-hot argmax
            hard = F.one_hot(s.argmax(1), s.shape[1]).transpose(1, 2).to(s.dtype)
            a, den = torch.sigmoid(s) * hard, hard.sum(-1) + 1
        zs.append((tokens(chunks[2 + 2 * k], cl.grid) + a @ pts[2 + 2 * k]) / den[..., None])
    z = torch.cat(zs, 1)
    c = mixer.consensus
    g = (c.sim_alpha.view(1, -1, 1) * cos(z, pts[0]) + c.sim_beta.view(1, -1, 1)).softmax(1)
    y = (g.transpose(1, 2) @ z).transpose(1, 2)  # (B*h, d, N')
    gh, gw = grid or (hh, ww)
    y = y.reshape(b * h, d, gh, gw)
    if grid:
        y = F.interpolate(y, size=(hh, ww), mode='bilinear', align_corners=False)
    y = y.reshape(b, h * d, hh, ww).permute(0, 2, 3, 1)
    return mixer.proj_out(y)


@pytest.mark.parametrize('size,agents,clamp', [((12, 12), None, False), ((11, 9), 5, False),
                                               ((6, 6), 8, False), ((6, 6), 8, True),
                                               ((10, 7), (8, 5), True)])
def test_mixer_equals_plain_reference(size, agents, clamp):
    torch.manual_seed(0)
    mixer = EnsembleClustering(dim=24, num_heads=3, head_dim=8,
                               base_clusterings=[dict(type='FuzzyClustering', grid=4),
                                                 dict(type='PartitionalClustering', grid=(3, 2))],
                               agents=agents, layer_scale_init_value=0.5,
                               clamp_agents=clamp).double().eval()
    with torch.no_grad():
        for name, p in mixer.named_parameters():
            if 'sim_' in name:
                p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(2, *size, 24, dtype=torch.float64)
    assert torch.allclose(mixer(x), _reference_ensemble(mixer, x), atol=1e-12)


def test_gaussian_log_likelihood_matches_direct_formula():
    c, p, lv = _rand(2, 3, 5), _rand(2, 4, 5), _rand(3, 5) * 0.3
    direct = -0.5 * (((p.unsqueeze(1) - c.unsqueeze(2)) ** 2 * torch.exp(-lv)[None, :, None])
                     .sum(-1) + lv.sum(-1)[None, :, None])
    assert torch.allclose(ops.gaussian_log_likelihood(c, p, lv), direct, atol=1e-10)


def test_aggregate_matches_definition():
    w, v, u = torch.rand(2, 3, 5), torch.randn(2, 5, 4), torch.randn(2, 3, 4)
    den = w.sum(-1) + 1e-7
    ref = (u + torch.einsum('bmn,bnd->bmd', w, v)) / den[..., None]
    assert torch.allclose(ops.aggregate(w, v, u, den), ref, atol=1e-6)


@pytest.mark.parametrize('use_scatter', [False, True])
def test_segment_aggregate_equals_reference(use_scatter):
    if use_scatter and not ops.HAS_TORCH_SCATTER:
        pytest.skip('torch-scatter not installed (the pure path is tested)')
    v, u = torch.randn(3, 50, 8), torch.randn(3, 6, 8)
    idx, w = torch.randint(0, 6, (3, 50)), torch.rand(3, 50)
    for weight in (w, None):
        fast = ops.segment_aggregate(v, idx, weight, u, use_scatter=use_scatter)
        ref = ops.segment_aggregate_reference(v, idx, weight, u)
        assert (fast - ref).abs().max() <= 1e-5


def test_mixer_saves_no_bdmn_temporary():
    """The training graph must not keep a (b, d, M, N)-sized tensor (published defect)."""
    mixer = EnsembleClustering(dim=16, num_heads=2, head_dim=8,
                               base_clusterings=[dict(type='FuzzyClustering', grid=4),
                                                 dict(type='PartitionalClustering', grid=3)],
                               agents=None).train()
    x = torch.randn(2, 12, 12, 16)
    b, d, m, n = 2 * 2, 8, 16 + 9, 144
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t,
                                                  lambda t: t):
        mixer(x).sum().backward()
    assert max(sizes) < b * d * m * n // 4
    assert max(sizes) >= b * m * n  # the (b, M, N) assignment itself is saved


def test_mixer_agents_shapes_and_recording():
    from enformer_core.analysis import record_assignments
    mixer = EnsembleClustering(dim=16, num_heads=2, head_dim=8,
                               base_clusterings=[dict(type='FuzzyClustering', grid=3),
                                                 dict(type='PartitionalClustering', grid=2)],
                               agents=5).eval()
    with record_assignments(mixer) as mods:
        y = mixer(torch.randn(3, 11, 9, 16))
    assert y.shape == (3, 11, 9, 16)
    fuzzy, part, cons = mods
    assert fuzzy.last_assignment.shape == (6, 9, 25)
    assert part.last_assignment.shape == (6, 4, 25)
    assert torch.equal(part.last_assignment.sum(1), torch.ones(6, 25))
    assert isinstance(cons, ConsensusAggregation) and cons.last_assignment.shape == (6, 13, 25)
    assert not fuzzy.record  # recording stops on exit
