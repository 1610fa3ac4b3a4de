"""The official EnFormer layout <-> ours: the layout table, on-the-fly loading and the CLI."""
import torch

from enformer_core import create_model, load_checkpoint
from enformer_core.checkpoint.convert import convert_state
from enformer_core.models import EnFormer
from enformer_core.models.enformer import ENFORMER_LAYOUT


def test_published_layout_loads_strictly(published_state):
    for fused in (False, True):
        pub = published_state('enformer_s_fused' if fused else 'enformer_s')
        assert len(pub) == (384 if fused else 690)
        model = create_model('enformer_s')
        if fused:
            model.reparameterize()
        report = load_checkpoint(model, pub)  # strict: converted on the fly, every key fits
        assert report.fits and report.converted_from == 'published EnFormer'
        sd = model.state_dict()
        assert torch.equal(sd['head.fc.weight'], pub['head.weight'])
        assert torch.equal(sd['backbone.post_norm3.weight'], pub['classifier_pre_norm.weight'])
        assert torch.equal(sd['backbone.stages.2.blocks.3.mixer.clusterings.1.sim_alpha'],
                           pub['stages.2.blocks.3.cluster.cluster_module_1.sim_alpha'])
        assert torch.equal(sd['backbone.stages.1.blocks.0.ffn.fc1.weight'],
                           pub['stages.1.blocks.0.ffn.ffn_layers.1.linear.1.weight'])


def test_cli_roundtrip_is_identity(load_tool, tmp_path):
    cli = load_tool('tools/model_converters/enformer_to_mmpretrain.py')
    for name in ('enformer_s', 'enformer_l'):     # L has 5x5/7x7 kernels: several branches
        model = create_model(name)
        for p in model.parameters():
            p.data.normal_()
        src = tmp_path / f'{name}.pth'
        torch.save({'state_dict': model.state_dict(), 'meta': {}}, src)
        pub, back = tmp_path / 'pub.pth', tmp_path / 'back.pth'
        cli.main('enformer', [str(src), str(pub), '--reverse', '--strict'])
        published = torch.load(pub, weights_only=True)['state_dict']
        assert 'classifier_pre_norm.weight' in published and 'head.weight' in published
        assert not any(k.startswith('backbone.') for k in published)
        rep = cli.main('enformer', [str(pub), str(back), '--strict', '--check', name])
        assert rep['unmatched'] == [] and rep['check'].fits
        ckpt = torch.load(back, weights_only=True)
        assert ckpt['meta']['conversion'] == 'official EnFormer -> ours'
        orig = model.state_dict()
        assert list(ckpt['state_dict']) == list(orig)
        assert all(torch.equal(ckpt['state_dict'][k], orig[k]) for k in orig)
        create_model(name, pretrained=str(back))  # and it loads through the PyTorch API


def test_dense_checkpoint_passes_other_keys_through():
    bb = EnFormer('s', clustering='segmentation', out_indices=(0, 1, 2, 3),
                  gap_before_final_norm=False)
    state = {'backbone.' + k: v for k, v in bb.state_dict().items()}
    state['decode_head.conv_seg.weight'] = torch.randn(150, 128, 1, 1)
    pub, rep = convert_state(state, ENFORMER_LAYOUT, reverse=True)
    assert 'backbone.stages.0.blocks.0.cluster.cluster_module_0.sim_alpha' in pub
    assert 'backbone.post_norm3.weight' in pub
    assert rep['passed_through'] == ['decode_head.conv_seg.weight']
    back, rep = convert_state(pub, ENFORMER_LAYOUT)
    assert list(back) == list(state) and rep['unmatched'] == []
    assert rep['passed_through'] == ['decode_head.conv_seg.weight']
    bare, rep = convert_state(pub, ENFORMER_LAYOUT, backbone_only=True)
    assert rep['dropped'] == ['decode_head.conv_seg.weight']
    assert not bb.load_state_dict(bare, strict=True).missing_keys
    # a published segmentor loads straight into the dense backbone (prefix backbone.)
    fresh = EnFormer('s', clustering='segmentation', out_indices=(0, 1, 2, 3),
                     gap_before_final_norm=False)
    assert load_checkpoint(fresh, pub, prefix='backbone.').fits
    assert torch.equal(fresh.post_norm2.weight, bb.post_norm2.weight)
