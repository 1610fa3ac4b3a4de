"""The official Context Clusters / FEC layouts <-> ours: tables, Pretrained loading, CLIs."""
import pytest
import torch

from enformer_core import CheckpointError, create_model, load_checkpoint
from enformer_core.checkpoint.convert import convert_state
from enformer_core.models import FEC, ContextCluster
from enformer_core.models.context_cluster import COC_LAYOUT
from enformer_core.models.fec import FEC_LAYOUT

LAYOUTS = {'coc_tiny': COC_LAYOUT, 'coc_small': COC_LAYOUT, 'fec_small': FEC_LAYOUT}


@pytest.mark.parametrize('name', sorted(LAYOUTS))
def test_published_layout_converts_and_loads_strictly(published_state, name):
    published = published_state(name)
    layout = LAYOUTS[name]
    assert layout.matches(published)
    ours, unmatched = layout.to_ours(published)
    assert unmatched == []
    model = create_model(name)
    model.load_state_dict(ours, strict=True)  # no missing, no unexpected key
    back, unmatched = layout.to_published(model.state_dict())
    assert unmatched == [] and set(back) == set(published)
    assert all(torch.equal(back[k], published[k]) for k in published)
    assert load_checkpoint(create_model(name), published).fits  # on the fly


@pytest.mark.parametrize('name', ['coc_tiny', 'coc_small', 'fec_small', 'fec_base'])
def test_ours_published_ours_is_identity(name):
    layout = FEC_LAYOUT if name.startswith('fec') else COC_LAYOUT
    state = create_model(name).state_dict()
    again = layout.to_ours(layout.to_published(state)[0])[0]
    assert list(again) == list(state)
    assert all(torch.equal(again[k], state[k]) for k in state)


def test_dense_backbone_round_trip_and_detector_passthrough():
    bb = FEC('small', clustering='detection', out_indices=(0, 1, 2, 3),
             gap_before_final_norm=False)
    state = bb.state_dict()
    pub, unmatched = FEC_LAYOUT.to_published(state)
    assert unmatched == [] and {f'norm{i}.weight' for i in (0, 2, 4, 6)} <= set(pub)
    again, _ = FEC_LAYOUT.to_ours(pub)
    again = {k[9:]: v for k, v in again.items()}
    assert set(again) == set(state) and all(torch.equal(again[k], state[k]) for k in state)
    # a published detector: backbone.* converted, neck/head keys passed through
    det = {f'backbone.{k}': v for k, v in pub.items()}
    det['neck.lateral_convs.0.conv.weight'] = torch.zeros(1)
    out, report = convert_state(det, FEC_LAYOUT)
    assert report['passed_through'] == ['neck.lateral_convs.0.conv.weight']
    assert 'backbone.post_norm0.weight' in out and 'backbone.stem.weight' in out


def test_unmatched_keys_are_reported():
    state = {'patch_embed.proj.weight': torch.zeros(1), 'mystery.weight': torch.zeros(1)}
    out, report = convert_state(state, COC_LAYOUT)
    assert report['unmatched'] == ['mystery.weight'] and 'backbone.stem.weight' in out
    with pytest.raises(CheckpointError, match='not a checkpoint in the official'):
        convert_state({'backbone.stem.weight': torch.zeros(1)}, COC_LAYOUT)


def test_init_cfg_pretrained_loads_published_layout(published_state, tmp_path):
    """A classifier's checkpoint into a dense backbone: weights converted and loaded, the
    output norms kept at their initial values (the published code does the same)."""
    published = published_state('coc_tiny')
    path = tmp_path / 'coc_tiny_published.pth'
    torch.save({'state_dict': published}, path)
    bb = ContextCluster('tiny', out_indices=(0, 1, 2, 3), gap_before_final_norm=False,
                        init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                      prefix='backbone.'))
    bb.init_weights()
    assert torch.equal(bb.stem.weight, published['patch_embed.proj.weight'])
    assert torch.equal(bb.stages[2].blocks[4].mixer.f.weight,
                       published['network.4.4.token_mixer.f.weight'])
    assert torch.equal(bb.stages[1].downsample.weight, published['network.3.proj.weight'])
    assert torch.equal(bb.post_norm3.weight, torch.ones(320))


def test_converter_clis(published_state, load_tool, tmp_path, capsys):
    published = published_state('fec_small')
    src, dst, back = tmp_path / 'pub.pth', tmp_path / 'ours.pth', tmp_path / 'back.pth'
    torch.save(published, src)
    fec_cli = load_tool('tools/model_converters/fec_to_mmpretrain.py')
    rep = fec_cli.main('fec', [str(src), str(dst), '--check', 'fec_small', '--strict'])
    assert rep['check'].fits and 'every key fits' in capsys.readouterr().out
    ours = torch.load(dst, weights_only=True)['state_dict']
    create_model('fec_small').load_state_dict(ours, strict=True)
    fec_cli.main('fec', [str(dst), str(back), '--reverse'])
    again = torch.load(back, weights_only=True)['state_dict']
    assert all(torch.equal(again[k], published[k]) for k in published)
    # not an official checkpoint: a clear error and exit status 2
    with pytest.raises(SystemExit) as exit_:
        load_tool('tools/model_converters/coc_to_mmpretrain.py').main('coc', [str(dst), str(back)])
    assert exit_.value.code == 2
    assert 'not a checkpoint in the official Context Clusters layout' in capsys.readouterr().err
