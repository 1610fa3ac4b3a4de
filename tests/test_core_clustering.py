"""Clustering ops: float64 gradcheck, fast vs reference paths, assignment rules, memory shape."""
import pytest
import torch
import torch.nn.functional as F

from enformer_core.models.clustering import (ConsensusAggregation, EnsembleClustering,
                                             build_clustering)
from enformer_core.ops import clustering as ops


def _rand(*shape):
    return torch.randn(*shape, dtype=torch.float64)


@pytest.mark.parametrize('rule', ['fuzzy', 'possibilistic', 'probabilistic', 'partitional'])
def test_base_clustering_gradcheck(rule):
    module = build_clustering(dict(type='BaseClustering', rule=rule, grid=(2, 2)),
                              head_dim=3).double().eval()
    with torch.no_grad():  # non-trivial per-centre parameters
        module.sim_alpha.copy_(torch.rand(4, dtype=torch.float64) + 0.5)
        module.sim_beta.copy_(torch.randn(4, dtype=torch.float64) * 0.1)
        if rule == 'probabilistic':
            module.log_vars.copy_(torch.randn(4, 3, dtype=torch.float64) * 0.2)
    keys, values = _rand(2, 3, 4, 4), _rand(2, 3, 4, 4)
    kp, vp = keys.flatten(2).transpose(1, 2), values.flatten(2).transpose(1, 2)
    inputs = tuple(t.clone().requires_grad_() for t in (keys, values, kp, vp))
    params = [p for p in module.parameters()]

    def fn(k, v, p, q, *ps):
        return module(k, v, p, q)

    assert torch.autograd.gradcheck(fn, inputs + tuple(params), eps=1e-6, atol=1e-5)


def test_centre_bias_option_gradcheck():
    module = build_clustering(dict(type='FuzzyClustering', grid=2, centre_bias=True),
                              head_dim=3).double().eval()
    keys, values = _rand(1, 3, 4, 4).requires_grad_(), _rand(1, 3, 4, 4).requires_grad_()
    kp = keys.detach().flatten(2).transpose(1, 2).clone().requires_grad_()
    vp = values.detach().flatten(2).transpose(1, 2).clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: module(*a), (keys, values, kp, vp), eps=1e-6,
                                    atol=1e-5)


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
    a, den = ops.assign(sim, 'fuzzy')
    assert torch.allclose(a.sum(1), torch.ones(2, 6))
    assert torch.allclose(den, a.sum(-1) + 1e-7)
    a, den = ops.assign(sim, 'possibilistic')
    assert torch.allclose(a, torch.sigmoid(sim))
    a, den = ops.assign(sim, 'partitional', training=False)
    hard = F.one_hot(sim.argmax(1), 4).transpose(1, 2).float()
    assert torch.equal(a, torch.sigmoid(sim) * hard)
    assert torch.equal(den, hard.sum(-1) + 1)
    # training: straight-through Gumbel gives one-hot masks that can differ from argmax
    torch.manual_seed(0)
    masks = [ops.hard_mask(sim, training=True) for _ in range(20)]
    assert all(torch.equal(m.sum(1), torch.ones(2, 6)) for m in masks)
    assert any(not torch.equal(m, hard) for m in masks)
    with pytest.raises(ValueError, match='unknown assignment rule'):
        ops.assign(sim, 'spectral')


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
    from enformer_core.utils.inspect import record_assignments
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
