"""Checkpoints: weights-only reading with clear errors, one loader and its report, ImageNet ->
dense adaptation, the key-renaming engine, create_model(pretrained=...)."""
import os

import pytest
import torch

from enformer_core import CheckpointError, create_model, load_checkpoint, read_state_dict
from enformer_core.checkpoint import KeyMap, torch_load
from enformer_core.models import EnFormer


class _Evil:
    def __reduce__(self):
        return (os.system, ('echo pwned',))


def test_weights_only_refuses_arbitrary_code(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'x': _Evil()}, path)
    with pytest.raises(CheckpointError, match='refused to load') as err:
        torch_load(str(path))
    assert 'Only state dicts' in str(err.value)


def test_restricted_getattr_refuses_other_attributes(tmp_path):
    path = tmp_path / 'evil_getattr.pth'
    from mmengine.logging.history_buffer import HistoryBuffer

    class _GetattrEvil:  # getattr is allow-listed only for HistoryBuffer's statistics
        def __reduce__(self):
            return (getattr, (HistoryBuffer, '__init__'))

    torch.save({'x': _GetattrEvil()}, path)
    with pytest.raises(CheckpointError, match='refused to load'):
        torch_load(str(path))


def test_empty_truncated_and_missing_files_say_what_is_wrong(tmp_path):
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    with pytest.raises(CheckpointError, match='is empty \\(0 bytes\\)'):
        read_state_dict(str(empty))
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': {'w': torch.ones(1000)}}, good)
    cut = tmp_path / 'cut.pth'
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(CheckpointError, match='truncated'):
        read_state_dict(str(cut))
    with pytest.raises(CheckpointError, match='not found'):
        read_state_dict(str(tmp_path / 'nope.pth'))
    odd = tmp_path / 'odd.pth'
    torch.save({'epoch': 3}, odd)
    with pytest.raises(CheckpointError, match='no state dict of tensors'):
        read_state_dict(str(odd))


def test_non_finite_tensors_are_refused_by_name(tmp_path):
    state = create_model('enformer_s').state_dict()
    state['backbone.stem.conv1.weight'][0, 0, 0, 0] = float('nan')
    state['head.fc.bias'][3] = float('inf')
    path = tmp_path / 'diverged.pth'
    torch.save({'state_dict': state}, path)
    with pytest.raises(CheckpointError, match='NaN or Inf') as err:
        create_model('enformer_s', pretrained=str(path))
    assert 'backbone.stem.conv1.weight' in str(err.value) and 'head.fc.bias' in str(err.value)


def _save(model, path):
    torch.save({'meta': {'epoch': 1}, 'state_dict': model.state_dict()}, path)


def test_imagenet_checkpoint_into_detection_backbone(tmp_path):
    """Per-centre parameters adapt; every dense output norm keeps its initial 1/0 (the
    classifier's pre-head norm is not a stage norm), as the published code does."""
    cls = create_model('enformer_s')
    with torch.no_grad():
        for n, p in cls.named_parameters():
            if 'sim_' in n or 'post_norm' in n:
                p.copy_(torch.randn_like(p))
    ckpt = tmp_path / 'in1k.pth'
    _save(cls, ckpt)

    det = EnFormer('s', clustering='detection', out_indices=(0, 1, 2, 3),
                   gap_before_final_norm=False)
    report = load_checkpoint(det, str(ckpt), prefix='backbone.')
    assert report.fits
    assert len(report.adapted) == 18 * 3 * 2  # consensus + 2 base clusterings, alpha and beta
    assert sorted(report.kept_init) == sorted(
        f'post_norm{i}.{w}' for i in range(4) for w in ('weight', 'bias'))
    assert torch.equal(det.post_norm3.weight, torch.ones(320))
    assert torch.equal(det.post_norm3.bias, torch.zeros(320))
    assert 'kept at their initial values' in str(report)

    src = cls.backbone.stages[2].blocks[0].mixer.consensus.sim_alpha
    dst = det.stages[2].blocks[0].mixer.consensus.sim_alpha
    n = src.numel()
    assert torch.equal(dst[:n], src)
    assert torch.allclose(dst[n:], src.mean().expand(dst.numel() - n))
    assert torch.equal(det.stages[1].blocks[1].ffn.fc1.weight,
                       cls.backbone.stages[1].blocks[1].ffn.fc1.weight)

    # init_cfg=Pretrained goes through the same loader (what mmengine's Runner calls)
    det2 = EnFormer('s', clustering='detection', out_indices=(0, 1, 2, 3),
                    gap_before_final_norm=False,
                    init_cfg=dict(type='Pretrained', checkpoint=str(ckpt), prefix='backbone.'))
    det2.init_weights()
    assert torch.equal(det2.stages[3].blocks[0].mixer.proj_in.weight,
                       cls.backbone.stages[3].blocks[0].mixer.proj_in.weight)


def test_wrong_variant_through_init_cfg_is_an_error_unless_partial_is_asked(tmp_path):
    ckpt = tmp_path / 'b.pth'
    _save(create_model('enformer_b'), ckpt)
    cfg = dict(type='Pretrained', checkpoint=str(ckpt), prefix='backbone.')
    det = EnFormer('s', clustering='detection', out_indices=(0, 1, 2, 3),
                   gap_before_final_norm=False, init_cfg=cfg)
    with pytest.raises(CheckpointError, match='another variant') as err:
        det.init_weights()
    assert 'of another shape' in str(err.value) and 'stem.conv1.weight' in str(err.value)
    before = det.stem.conv1.weight.clone()
    partial = EnFormer('s', clustering='detection', out_indices=(0, 1, 2, 3),
                       gap_before_final_norm=False, init_cfg=dict(cfg, strict=False))
    partial.init_weights()  # explicitly partial: loads what fits, reports the rest
    assert partial.stem.conv1.weight.shape == before.shape


def test_prefix_that_matches_nothing_is_an_error(tmp_path):
    ckpt = tmp_path / 'in1k.pth'
    _save(create_model('enformer_s'), ckpt)
    with pytest.raises(CheckpointError, match="starts with 'model.backbone.'"):
        load_checkpoint(EnFormer('s'), str(ckpt), prefix='model.backbone.')


def test_backbone_prefix_is_added_or_stripped_when_that_is_the_only_match(tmp_path):
    cls = create_model('enformer_s').eval()
    bare = EnFormer('s').eval()
    report = load_checkpoint(bare, cls.state_dict(), strict=False)
    assert report.loaded == len(bare.state_dict()) and report.unexpected == []
    back = create_model('enformer_s').eval()
    report = load_checkpoint(back, bare.state_dict(), strict=False)
    assert report.missing == ['head.fc.weight', 'head.fc.bias']


def test_create_model_pretrained_round_trip_and_wrong_variant(tmp_path):
    src = create_model('enformer_s').eval()
    ckpt = tmp_path / 's.pth'
    _save(src, ckpt)
    loaded = create_model('enformer_s', pretrained=str(ckpt)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(src(x), loaded(x))
    with pytest.raises(CheckpointError, match='another variant') as err:
        create_model('enformer_b', pretrained=str(ckpt))
    assert 'of another shape' in str(err.value) and 'backbone.stem.conv1.weight' in str(err.value)
    with pytest.raises(CheckpointError, match='not found'):
        create_model('enformer_s', pretrained=str(tmp_path / 'missing.pth'))
    # another number of classes: the head starts fresh, everything else is strict
    ten = create_model('enformer_s', pretrained=str(ckpt), num_classes=10)
    assert ten.head.fc.weight.shape == (10, 320)
    assert torch.equal(ten.backbone.stem.conv1.weight, src.backbone.stem.conv1.weight)


def test_key_map_renames_both_ways_with_stage_arithmetic():
    km = KeyMap([('network.{s:2n}.{b}.token_mixer.{p:any}', 'stages.{s}.blocks.{b}.mixer.{p:any}'),
                 ('network.{s:2n+1}.proj.{p:any}', 'stages.{s}.downsample.{p:any}')])
    state = {'network.4.1.token_mixer.f.weight': torch.zeros(1),
             'network.5.proj.bias': torch.zeros(1), 'network.3.0.token_mixer.x': torch.zeros(1)}
    out, unmatched = km.convert(state)
    assert set(out) == {'stages.2.blocks.1.mixer.f.weight', 'stages.2.downsample.bias'}
    assert unmatched == ['network.3.0.token_mixer.x']  # odd index is no stage
    back, unmatched = km.convert(out, reverse=True)
    assert set(back) == {'network.4.1.token_mixer.f.weight', 'network.5.proj.bias'}
    assert unmatched == []
