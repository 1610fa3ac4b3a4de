"""Published CoC/FEC checkpoint layouts <-> ours, Pretrained loading and the converter CLIs."""
import runpy
import sys

import pytest
import torch

import enformer_core  # noqa: F401
from enformer_core.models import baselines  # noqa: F401
from enformer_core.models.baseline_converters import (convert_baseline_checkpoint,
                                                      convert_baseline_state,
                                                      is_published_baseline)
from enformer_core.models.checkpoint import CheckpointError
from enformer_core.models.context_cluster import ContextCluster
from enformer_core.models.factory import create_model
from enformer_core.models.fec import FEC

SPEC = {'coc_tiny': 'coc_tiny', 'coc_small': 'coc_small', 'fec_small': 'fec_small'}


def spec_state(repo_root, name):
    # the spec lives beside the checkout (../shared) or inside it (shared/)
    candidates = [root / 'shared' / 'spec' / f'{name}_state_dict.txt'
                  for root in (repo_root.parent, repo_root)]
    path = next((p for p in candidates if p.exists()), None)
    assert path is not None, f'published key list not found in {candidates}'
    state = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith('#'):
            continue
        key, shape = line.split('\t')
        shape = tuple(int(s) for s in shape.strip('()').split(',') if s.strip())
        state[key] = torch.randn(shape)
    return state


@pytest.mark.parametrize('name', sorted(SPEC))
def test_spec_layout_converts_and_loads_strictly(repo_root, name):
    published = spec_state(repo_root, name)
    assert is_published_baseline(published)
    ours = convert_baseline_checkpoint(published)
    model = create_model(SPEC[name])
    model.load_state_dict(ours, strict=True)  # no missing, no unexpected key
    back = convert_baseline_checkpoint(model.state_dict(), 'ours_to_published')
    assert set(back) == set(published)
    assert all(torch.equal(back[k], published[k]) for k in published)


@pytest.mark.parametrize('name', ['coc_tiny', 'coc_small', 'fec_small', 'fec_base'])
def test_ours_published_ours_is_identity(name):
    state = create_model(name).state_dict()
    pub = convert_baseline_checkpoint(state, 'ours_to_published')
    again = convert_baseline_checkpoint(pub, 'published_to_ours')
    assert list(again) == list(state) or set(again) == set(state)
    assert all(torch.equal(again[k], state[k]) for k in state)


def test_dense_backbone_round_trip_and_detector_passthrough():
    bb = FEC('small', clustering='detection', out_indices=(0, 1, 2, 3), pooled_output=False)
    state = bb.state_dict()
    pub = convert_baseline_checkpoint(state, 'ours_to_published', classifier=False)
    assert {f'norm{i}.weight' for i in (0, 2, 4, 6)} <= set(pub)
    again = convert_baseline_checkpoint(pub, 'published_to_ours', classifier=False)
    assert set(again) == set(state) and all(torch.equal(again[k], state[k]) for k in state)
    # a published detector: backbone.* converted, neck/head keys passed through
    det = {f'backbone.{k}': v for k, v in pub.items()}
    det['neck.lateral_convs.0.conv.weight'] = torch.zeros(1)
    out = convert_baseline_checkpoint(det, 'published_to_ours')
    assert 'neck.lateral_convs.0.conv.weight' in out
    assert 'backbone.post_norm0.weight' in out and 'backbone.stem.weight' in out


def test_unmatched_keys_are_reported():
    state = {'patch_embed.proj.weight': torch.zeros(1), 'mystery.weight': torch.zeros(1)}
    out, unmatched = convert_baseline_state(state)
    assert unmatched == ['mystery.weight'] and 'backbone.stem.weight' in out
    with pytest.raises(CheckpointError, match='mystery'):
        convert_baseline_checkpoint(state)
    with pytest.raises(ValueError, match='direction'):
        convert_baseline_state(state, 'sideways')


def test_init_cfg_pretrained_loads_published_layout(repo_root, tmp_path):
    published = spec_state(repo_root, 'coc_tiny')
    path = tmp_path / 'coc_tiny_published.pth'
    torch.save({'state_dict': published}, path)
    bb = ContextCluster('tiny', out_indices=(0, 1, 2, 3), pooled_output=False,
                        init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                      prefix='backbone.'))
    bb.init_weights()
    assert torch.equal(bb.stem.weight, published['patch_embed.proj.weight'])
    assert torch.equal(bb.stages[2].blocks[4].mixer.f.weight,
                       published['network.4.4.token_mixer.f.weight'])
    assert torch.equal(bb.stages[1].downsample.weight, published['network.3.proj.weight'])
    assert torch.equal(bb.post_norm3.weight, published['norm.weight'])


def test_converter_clis(repo_root, tmp_path, monkeypatch, capsys):
    published = spec_state(repo_root, 'fec_small')
    src, dst, back = tmp_path / 'pub.pth', tmp_path / 'ours.pth', tmp_path / 'back.pth'
    torch.save(published, src)
    script = repo_root / 'tools' / 'model_converters' / 'fec_to_enformer_core.py'
    monkeypatch.setattr(sys, 'argv', [str(script), str(src), str(dst), '--check', 'fec_small',
                                      '--strict'])
    runpy.run_path(str(script), run_name='__main__')
    assert '0 missing, 0 unexpected' in capsys.readouterr().out
    ours = torch.load(dst, weights_only=True)['state_dict']
    create_model('fec_small').load_state_dict(ours, strict=True)
    script = repo_root / 'tools' / 'model_converters' / 'coc_to_enformer_core.py'
    monkeypatch.setattr(sys, 'argv', [str(script), str(dst), str(back), '--reverse'])
    runpy.run_path(str(script), run_name='__main__')
    again = torch.load(back, weights_only=True)['state_dict']
    assert all(torch.equal(again[k], published[k]) for k in published)
    # not a published checkpoint: a clear error
    monkeypatch.setattr(sys, 'argv', [str(script), str(dst), str(back)])
    with pytest.raises(CheckpointError, match='does not look like'):
        runpy.run_path(str(script), run_name='__main__')
