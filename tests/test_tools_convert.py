"""tools/model_converters: published EnFormer layout <-> ours."""
import re
from pathlib import Path

import pytest
import torch

from enformer_core import create_model
from enformer_core.analysis import convert_state
from enformer_core.models.checkpoint import convert_checkpoint



def _spec_file(repo_root, name) -> Path:
    # CI has shared/ beside the clone; the workspace has it at ../shared
    for base in (repo_root / '..' / 'shared' / 'spec', repo_root / 'shared' / 'spec'):
        if (base / name).is_file():
            return base / name
    raise FileNotFoundError(f'spec file {name} not found beside the repository')


def published_state(path: Path):
    """A random state dict with the keys and shapes listed in the spec file."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith('#'):
            continue
        key, shape = line.split('\t')
        dims = tuple(int(d) for d in re.findall(r'\d+', shape))
        state[key] = (torch.randint(0, 100, dims, generator=g) if key.endswith('num_batches_tracked')
                      else torch.randn(dims, generator=g))
    return state


@pytest.mark.parametrize('fused', [False, True])
def test_published_spec_layout_loads(repo_root, fused):
    name = 'enformer_s_state_dict_fused.txt' if fused else 'enformer_s_state_dict.txt'
    pub = published_state(_spec_file(repo_root, name))
    assert len(pub) == (384 if fused else 690)
    ours = convert_checkpoint(pub, 'published_to_ours')
    model = create_model('enformer_s')
    if fused:
        model.reparameterize()
    result = model.load_state_dict(ours, strict=True)   # no missing, no unexpected
    assert not result.missing_keys and not result.unexpected_keys
    sd = model.state_dict()
    assert torch.equal(sd['head.fc.weight'], pub['head.weight'])
    assert torch.equal(sd['backbone.post_norm3.weight'], pub['classifier_pre_norm.weight'])
    assert torch.equal(sd['backbone.stages.2.blocks.3.mixer.clusterings.1.sim_alpha'],
                       pub['stages.2.blocks.3.cluster.cluster_module_1.sim_alpha'])
    assert torch.equal(sd['backbone.stages.1.blocks.0.ffn.fc1.weight'],
                       pub['stages.1.blocks.0.ffn.ffn_layers.1.linear.1.weight'])


def test_cli_roundtrip_is_identity(load_tool, tmp_path):
    for name in ('enformer_s', 'enformer_l'):     # L has 5x5/7x7 kernels: several branches
        model = create_model(name)
        for p in model.parameters():
            p.data.normal_()
        src = tmp_path / f'{name}.pth'
        torch.save({'state_dict': model.state_dict(), 'meta': {}}, src)
        pub, back = tmp_path / 'pub.pth', tmp_path / 'back.pth'
        load_tool('tools/model_converters/mmpretrain_to_enformer.py').main(
            [str(src), str(pub), '--strict'])
        published = torch.load(pub, weights_only=True)['state_dict']
        assert 'classifier_pre_norm.weight' in published and 'head.weight' in published
        assert not any(k.startswith('backbone.') for k in published)
        rep = load_tool('tools/model_converters/enformer_to_mmpretrain.py').main(
            [str(pub), str(back), '--strict'])
        assert rep['unmatched'] == []
        ckpt = torch.load(back, weights_only=True)
        assert ckpt['meta']['direction'] == 'published_to_ours'
        orig = model.state_dict()
        assert list(ckpt['state_dict']) == list(orig)
        assert all(torch.equal(ckpt['state_dict'][k], orig[k]) for k in orig)
        # and the result loads through the plain-PyTorch entry point
        create_model(name, pretrained=str(back))


def test_dense_checkpoint_passes_other_keys_through(tmp_path):
    from enformer_core.models import EnFormer
    bb = EnFormer('s', clustering='segmentation', out_indices=(0, 1, 2, 3),
                  gap_before_final_norm=False)
    state = {'backbone.' + k: v for k, v in bb.state_dict().items()}
    state['decode_head.conv_seg.weight'] = torch.randn(150, 128, 1, 1)
    pub, rep = convert_state(state, 'ours_to_published', dense=True)
    assert 'backbone.stages.0.blocks.0.cluster.cluster_module_0.sim_alpha' in pub
    assert 'backbone.post_norm3.weight' in pub
    assert rep['passed_through'] == ['decode_head.conv_seg.weight']
    back, rep = convert_state(pub, 'published_to_ours', dense=True)
    assert list(back) == list(state) and rep['unmatched'] == []
    bare, rep = convert_state(pub, 'published_to_ours', backbone_only=True)
    assert rep['dropped'] == ['decode_head.conv_seg.weight']
    assert not bb.load_state_dict(bare, strict=True).missing_keys
    # a detector checkpoint without --dense: the neck/head keys are reported, not lost silently
    _, rep = convert_state(pub, 'published_to_ours')
    assert rep['unmatched'] == ['decode_head.conv_seg.weight']
