"""tools/analysis/get_flops.py: parameters (true + paper convention) and FLOPs vs the published numbers."""
import json

import pytest

from enformer_core.analysis import complexity, load_model



def test_get_flops_enformer_s_matches_published(load_tool, tmp_path, capsys):
    out = tmp_path / 'flops.json'
    load_tool('tools/analysis/get_flops.py').main(['enformer_s', '--json', str(out)])
    text = capsys.readouterr().out
    assert '2^20' in text and 'stages.2' in text
    (info,) = json.loads(out.read_text())
    assert info['shape'] == [224, 224]
    assert abs(info['gflops'] - 1.137) / 1.137 < 0.01            # published
    assert info['params'] == 8_531_184
    assert info['params_deploy'] == 8_506_224
    assert round(info['params_paper_mi'], 2) == 8.11                # published "8.1M"
    # the per-stage table covers the whole model
    assert sum(r['flops'] for r in info['stages']) == pytest.approx(info['flops'], rel=1e-6)
    assert sum(r['params'] for r in info['stages']) == info['params']
    assert info['stages'][3]['module'] == 'backbone.stages.2'
    assert 'aten::baddbmm' in info['uncounted_ops']                # fvcore convention


def test_count_extra_adds_the_clustering_ops():
    info = complexity(load_model('enformer_s'), (64, 64), count_extra=True)
    assert info['flops_with_extra'] > info['flops']
    assert 'baddbmm' in info['extra_by_operator']
    # baddbmm is the consensus matmul: a small share, as published (+0.5 % at 224)
    assert info['extra_by_operator']['baddbmm'] < 0.02 * info['flops']


def test_backbone_target_and_bad_name():
    lm = load_model('enformer_s')
    bb = complexity(lm, (64, 64), target='backbone')
    full = complexity(lm, (64, 64), target='full')
    assert bb['target'] == 'backbone' and bb['params'] == full['params'] - 321_000
    assert bb['flops'] < full['flops']
    with pytest.raises(ValueError, match='neither a config file nor a model name'):
        load_model('enformer_xxl')
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_model('configs/missing.py')
