"""Checkpoints: weights-only loading, ImageNet -> dense adaptation, clear errors, create_model."""
import os
import pickle

import pytest
import torch

from enformer_core import CheckpointError, create_model
from enformer_core.models import EnFormer, load_pretrained
from enformer_core.utils.safe_load import safe_torch_load


class _Evil:
    def __reduce__(self):
        return (os.system, ('echo pwned',))


def test_weights_only_refuses_arbitrary_code(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'x': _Evil()}, path)
    with pytest.raises(ValueError, match='weights_only=True'):
        safe_torch_load(str(path))


def test_restricted_getattr_refuses_other_attributes(tmp_path):
    path = tmp_path / 'evil_getattr.pth'

    from mmengine.logging.history_buffer import HistoryBuffer

    class _GetattrEvil:  # getattr is allow-listed only for HistoryBuffer's statistics
        def __reduce__(self):
            return (getattr, (HistoryBuffer, '__init__'))

    torch.save({'x': _GetattrEvil()}, path)
    with pytest.raises(ValueError, match='weights_only'):
        safe_torch_load(str(path))


def _save_mmpretrain_ckpt(model, path):
    torch.save({'meta': {'epoch': 1}, 'state_dict': model.state_dict()}, path)


def test_imagenet_checkpoint_into_detection_backbone_adapts_centres(tmp_path):
    cls = create_model('enformer_s')
    with torch.no_grad():
        for n, p in cls.named_parameters():
            if 'sim_' in n:
                p.copy_(torch.randn_like(p))
    ckpt = tmp_path / 'in1k.pth'
    _save_mmpretrain_ckpt(cls, ckpt)

    det = EnFormer('s', clustering='detection', out_indices=(0, 1, 2, 3),
                   gap_before_final_norm=False,
                   init_cfg=dict(type='Pretrained', checkpoint=str(ckpt), prefix='backbone.'))
    report = load_pretrained(det, str(ckpt), prefix='backbone.')
    # all blocks' consensus + both base clusterings, alpha and beta, were adapted
    assert len(report['adapted']) == 18 * 3 * 2
    assert not report['unexpected'] and not report['mismatched']
    assert sorted(report['missing']) == sorted(
        f'post_norm{i}.{w}' for i in range(3) for w in ('weight', 'bias'))

    src = cls.backbone.stages[2].blocks[0].mixer.consensus.sim_alpha
    dst = det.stages[2].blocks[0].mixer.consensus.sim_alpha
    n = src.numel()
    assert torch.equal(dst[:n], src)
    assert torch.allclose(dst[n:], src.mean().expand(dst.numel() - n))
    # matched weights were copied
    assert torch.equal(det.stages[1].blocks[1].ffn.fc1.weight,
                       cls.backbone.stages[1].blocks[1].ffn.fc1.weight)

    # init_weights() goes through the same path (what mmengine's Runner calls)
    det2 = EnFormer('s', clustering='detection', out_indices=(0, 1, 2, 3),
                    gap_before_final_norm=False,
                    init_cfg=dict(type='Pretrained', checkpoint=str(ckpt), prefix='backbone.'))
    det2.init_weights()
    assert torch.equal(det2.stages[3].blocks[0].mixer.proj_in.weight,
                       cls.backbone.stages[3].blocks[0].mixer.proj_in.weight)


def test_prefix_that_matches_nothing_is_an_error(tmp_path):
    ckpt = tmp_path / 'in1k.pth'
    _save_mmpretrain_ckpt(create_model('enformer_s'), ckpt)
    with pytest.raises(CheckpointError, match="prefix 'model.backbone.'"):
        load_pretrained(EnFormer('s'), str(ckpt), prefix='model.backbone.')


def test_create_model_pretrained_round_trip_and_wrong_variant(tmp_path):
    src = create_model('enformer_s').eval()
    ckpt = tmp_path / 's.pth'
    _save_mmpretrain_ckpt(src, ckpt)
    loaded = create_model('enformer_s', pretrained=str(ckpt)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(src(x), loaded(x))
    with pytest.raises(CheckpointError, match='another variant') as err:
        create_model('enformer_b', pretrained=str(ckpt))
    assert 'shape mismatch' in str(err.value) and 'backbone.stem.conv1.weight' in str(err.value)
    with pytest.raises(FileNotFoundError, match='not found'):
        create_model('enformer_s', pretrained=str(tmp_path / 'missing.pth'))
