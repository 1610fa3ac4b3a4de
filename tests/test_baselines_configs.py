"""Every baseline config parses; classification ones build; dense backbones build in mmdet/mmseg."""
import copy
import functools
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

import enformer_core  # noqa: F401
from enformer_core.analysis import count_params

ROOT = Path(__file__).resolve().parents[1]
CLS = sorted(str(p.relative_to(ROOT)) for fam in ('coc', 'fec', 'clusterformer')
             for p in (ROOT / 'classification' / 'configs' / fam).glob('*.py'))
DET = sorted(str(p.relative_to(ROOT)) for fam in ('coc', 'fec')
             for p in (ROOT / 'detection' / 'configs' / fam).glob('*.py'))
SEG = sorted(str(p.relative_to(ROOT)) for fam in ('coc', 'fec')
             for p in (ROOT / 'segmentation' / 'configs' / fam).glob('*.py'))

#: backbone parameter counts of the dense variants (docs/baselines.md)
DENSE_PARAMS = {'coc-small': 14_145_048, 'coc-medium': 28_778_544, 'fec-small': 5_407_112,
                'fec-base': 14_574_872, 'fec-large': 29_208_368}


@functools.lru_cache(maxsize=None)
def _parsed(path):
    return Config.fromfile(str(ROOT / path))


def load(path):
    """Parse once per session (mmdet::/mmseg:: bases are slow to resolve), copy per test."""
    return copy.deepcopy(_parsed(path))


def test_config_lists_complete():
    assert len(CLS) == 9 and len(DET) == 9 and len(SEG) == 9


@pytest.mark.parametrize('path', CLS + DET + SEG)
def test_config_parses(path):
    cfg = load(path)
    assert cfg.custom_imports == dict(imports=['enformer_core'], allow_failed_imports=False)
    bb = cfg.model.backbone
    assert bb.type in ('ContextCluster', 'FEC', 'ClusterFormer')
    if path in DET + SEG:
        assert tuple(bb.out_indices) == (0, 1, 2, 3) and bb.gap_before_final_norm is False
        assert bb.init_cfg.type == 'Pretrained' and bb.init_cfg.prefix == 'backbone.'
    if bb.type == 'FEC':
        assert cfg.find_unused_parameters is True


@pytest.mark.parametrize('path', CLS)
def test_classification_config_builds(path):
    from mmpretrain.registry import MODELS
    cfg = load(path)
    with torch.device('meta'):  # structure and sizes only
        model = MODELS.build(cfg.model)
    assert model.head.fc.in_features == model.backbone.embed_dims[-1]
    assert count_params(model) > 5_000_000


def test_classification_model_runs_in_mmpretrain():
    from mmpretrain.registry import MODELS
    from mmpretrain.structures import DataSample
    cfg = load('classification/configs/fec/fec-small_8xb128_in1k.py')
    cfg.model.head.num_classes = 5
    cfg.model.train_cfg = None
    model = MODELS.build(cfg.model)
    x = torch.randn(2, 3, 64, 64)
    samples = [DataSample().set_gt_label(i) for i in (1, 3)]
    losses = model(x, samples, mode='loss')
    assert torch.isfinite(losses['loss'])
    assert model(x, mode='tensor').shape == (2, 5)


def _dense_key(path):
    name = Path(path).name
    for key in DENSE_PARAMS:
        if key in name:
            return key
    raise KeyError(name)


@pytest.mark.parametrize('path', DET + SEG)
def test_dense_backbone_builds_in_toolbox(path):
    toolbox = 'mmdet' if path.startswith('detection') else 'mmseg'
    registry = pytest.importorskip(f'{toolbox}.registry').MODELS
    import importlib
    importlib.import_module(f'{toolbox}.models')
    cfg = load(path)
    bb_cfg = dict(cfg.model.backbone)
    bb_cfg.pop('init_cfg')  # no checkpoint on this machine
    with torch.device('meta'):
        bb = registry.build(bb_cfg)
    assert count_params(bb) == DENSE_PARAMS[_dense_key(path)]
    assert list(cfg.model.neck.in_channels) == bb.embed_dims


@pytest.mark.parametrize('path', ['detection/configs/fec/mask-rcnn_fec-small_fpn_1x_coco.py',
                                  'segmentation/configs/coc/'
                                  'fpn_coc-small-p5_8xb2-80k_ade20k-512x512.py'])
def test_full_dense_model_builds_and_runs(path):
    toolbox = 'mmdet' if path.startswith('detection') else 'mmseg'
    registry = pytest.importorskip(f'{toolbox}.registry').MODELS
    import importlib
    importlib.import_module(f'{toolbox}.models')
    cfg = load(path)
    cfg.model.backbone.pop('init_cfg')
    model = registry.build(cfg.model).eval()
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, 96, 128))
    assert len(feats) >= 4 and all(f.shape[1] == 256 for f in feats)
