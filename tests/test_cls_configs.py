"""Every classification config parses and builds; the ImageNet recipe is the published one."""
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / 'classification' / 'configs').rglob('*.py')
                 if '_base_' not in p.parts)
IN1K = {a: ROOT / f'classification/configs/enformer/enformer-{a}_8xb128_in1k.py'
        for a in 'sbl'}
#: params as trained, 1000-class head (docs/architecture.md, "Numbers")
PARAMS = {'s': 8_531_184, 'b': 15_636_184, 'l': 31_180_868}


def _build(cfg):
    init_default_scope(cfg.default_scope)
    from mmpretrain.registry import MODELS
    return MODELS.build(cfg.model)


def test_config_list_is_complete():
    names = {p.name for p in CONFIGS}
    assert {'enformer-s_8xb128_in1k.py', 'enformer-b_8xb128_in1k.py', 'enformer-l_8xb128_in1k.py',
            'enformer-s_fashion-mnist-64px.py'} <= names
    for base in ('models/enformer-s.py', 'models/enformer-b.py', 'models/enformer-l.py',
                 'datasets/imagenet_bs128.py', 'schedules/imagenet_bs1024_adamw_310e.py',
                 'default_runtime.py'):
        assert (ROOT / 'classification/configs/_base_' / base).is_file(), base


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_builds(path):
    cfg = Config.fromfile(str(path))
    assert cfg.default_scope == 'mmpretrain'
    assert cfg.custom_imports == dict(imports=['enformer_core'], allow_failed_imports=False)
    model = _build(cfg)
    assert type(model).__name__ == 'ImageClassifier'
    assert type(model.backbone).__name__ == cfg.model.backbone.type  # registered by enformer_core
    n = sum(p.numel() for p in model.parameters())
    if path.parent.name == 'enformer':
        assert n == PARAMS[cfg.model.backbone.arch]
    if 'fashion' in path.name:  # the demo: 10 classes, forward at 64 px
        model.eval()
        with torch.no_grad():
            out = model(torch.randn(2, 3, 64, 64), mode='tensor')
        assert out.shape == (2, 10)


def test_in1k_recipe_is_the_published_one():
    cfg = Config.fromfile(str(IN1K['s']))
    assert cfg.train_dataloader.batch_size * 8 == 1024
    ow = cfg.optim_wrapper
    assert ow.type == 'AmpOptimWrapper'
    assert (ow.optimizer.type, ow.optimizer.lr, ow.optimizer.weight_decay) == ('AdamW', 1e-3, 0.05)
    assert cfg.auto_scale_lr == dict(base_batch_size=1024, enable=False)
    warm, cos = cfg.param_scheduler
    assert warm.type == 'LinearLR' and warm.end == 5 and warm.start_factor * 1e-3 == pytest.approx(1e-6)
    assert cos.type == 'CosineAnnealingLR' and cos.eta_min == 1e-6 and cos.begin == 5
    assert cfg.train_cfg.max_epochs == 310
    ra = [t for t in cfg.train_pipeline if t.type == 'RandAugment'][0]
    assert (ra.magnitude_level, ra.magnitude_std, ra.num_policies) == (9, 0.5, 2)
    rrc = cfg.train_pipeline[1]
    assert (rrc.type, rrc.scale, rrc.interpolation) == ('RandomResizedCrop', 224, 'bicubic')
    er = [t for t in cfg.train_pipeline if t.type == 'RandomErasing'][0]
    assert er.erase_prob == 0.25
    resize, crop = cfg.test_pipeline[1:3]
    assert (resize.scale, resize.edge, resize.interpolation) == (248, 'short', 'bicubic')
    assert crop.crop_size == 224
    assert cfg.val_evaluator.topk == (1, 5)
    aug = cfg.model.train_cfg.augments
    assert [(a.type, a.alpha) for a in aug] == [('Mixup', 0.8), ('CutMix', 1.0)]
    assert cfg.model.head.loss.label_smooth_val == 0.1
    drop = {a: Config.fromfile(str(IN1K[a])).model.backbone.drop_path_rate for a in 'sbl'}
    assert drop == {'s': 0.1, 'b': 0.2, 'l': 0.3}


def test_no_weight_decay_on_one_dimensional_parameters():
    """The optimizer built from the S config decays only conv / linear weights."""
    from mmengine.optim import build_optim_wrapper
    cfg = Config.fromfile(str(IN1K['s']))
    model = _build(cfg)
    ow_cfg = cfg.optim_wrapper.copy()
    ow_cfg['type'] = 'OptimWrapper'  # AMP needs CUDA; the parameter groups are the same
    ow_cfg.pop('loss_scale')
    ow = build_optim_wrapper(model, ow_cfg)
    decay = {id(p): g['weight_decay'] for g in ow.optimizer.param_groups for p in g['params']}
    names = dict(model.named_parameters())
    for name, p in names.items():
        expected = 0.05 if p.ndim > 1 else 0.0
        assert decay[id(p)] == expected, name
    assert any('sim_alpha' in n for n in names) and any(n.endswith('gamma') for n in names)
