"""Segmentation configs: they build, have the published sizes, and the S/B/L Semantic FPN
segmentors run ``loss`` and ``predict`` on inputs whose sides are not multiples of 32."""
import copy
import functools
from pathlib import Path

import pytest
import torch

CONFIG_DIR = Path(__file__).resolve().parents[1] / 'segmentation' / 'configs'
ADE = {a: CONFIG_DIR / 'enformer' / f'fpn_enformer-{a}_8xb2-80k_ade20k-512x512.py' for a in 'sbl'}
DEMO = CONFIG_DIR / 'demo' / 'fpn_enformer-s_shapes-demo.py'

# published: dense segmentation backbones 8.23 / 15.14 / 30.69 M (1e6 units, trained
# graph); published Semantic FPN (150 classes) 12.3 / 19.3 / 34.6 M, which matches the model
# with the backbone re-parameterised (12.36 / 19.32 / 34.60 M).  Exact counts measured here.
BACKBONE_PARAMS = {'s': (8_229_456, 8.23), 'b': (15_136_512, 15.14), 'l': (30_692_800, 30.69)}
MODEL_PARAMS = {'s': 12_387_558, 'b': 19_403_158, 'l': 34_959_446}
MODEL_PARAMS_REPARAM = {'s': (12_362_598, 12.3), 'b': (19_320_598, 19.3), 'l': (34_595_542, 34.6)}


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def registry():
    import enformer_core  # noqa: F401
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    from mmseg.registry import MODELS
    return MODELS


def _cfg(path):
    from mmengine.config import Config
    return Config.fromfile(str(path))


@functools.lru_cache(maxsize=None)
def _ade_model(arch):
    """The recipe's segmentor (built once per arch: building L takes seconds here)."""
    from mmseg.registry import MODELS
    return MODELS.build(_cfg(ADE[arch]).model)


def _n(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize('path', list(ADE.values()) + [DEMO], ids=lambda p: p.stem)
def test_config_builds(path, registry):
    from mmseg.registry import TRANSFORMS
    cfg = _cfg(path)
    assert cfg.custom_imports == dict(imports=['enformer_core'], allow_failed_imports=False)
    bb = cfg.model.backbone
    assert (bb.type, bb.clustering, tuple(bb.out_indices), bb.gap_before_final_norm) == \
        ('EnFormer', 'segmentation', (0, 1, 2, 3), False)
    model = _ade_model(path.name.split('-')[1][0]) if path in ADE.values() else \
        registry.build(cfg.model)
    assert model.backbone.clustering_cfg['agents'][:2] == [32, 32]
    assert list(model.neck.in_channels) == model.backbone.embed_dims
    for pipeline in (cfg.train_pipeline, cfg.test_pipeline):
        for t in pipeline:
            TRANSFORMS.build(t)
    test_types = [t['type'] for t in cfg.test_pipeline]
    assert test_types[1:3] == ['Resize', 'ResizeToMultiple'] and \
        cfg.test_pipeline[2]['size_divisor'] == 32
    assert 'CheckSegLabels' in [t['type'] for t in cfg.train_pipeline]
    assert cfg.model.test_cfg.mode == 'whole'


@pytest.mark.parametrize('arch', 'sbl')
def test_published_recipe(arch, registry):
    cfg = _cfg(ADE[arch])
    m = cfg.model
    assert m.backbone.arch == arch and m.backbone.init_cfg == dict(
        type='Pretrained', checkpoint=f'checkpoints/enformer-{arch}_in1k.pth', prefix='backbone.')
    assert (m.neck.type, m.neck.out_channels, m.neck.num_outs) == ('FPN', 256, 4)
    h = m.decode_head
    assert (h.type, h.channels, h.dropout_ratio, h.num_classes) == ('FPNHead', 128, 0.1, 150)
    assert cfg.optim_wrapper.optimizer == dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999),
                                               weight_decay=1e-4)
    assert cfg.param_scheduler == [dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0,
                                        end=80000, by_epoch=False)]
    assert cfg.train_cfg.max_iters == 80000 and cfg.train_dataloader.batch_size * 8 == 16
    tp = {t['type']: t for t in cfg.train_pipeline}
    assert tp['RandomResize']['ratio_range'] == (0.5, 2.0)
    assert tp['RandomCrop'] == dict(type='RandomCrop', crop_size=(512, 512), cat_max_ratio=0.75)
    assert 'PhotoMetricDistortion' in tp and tp['RandomFlip']['prob'] == 0.5
    assert tp['LoadAnnotations']['reduce_zero_label'] is True
    assert cfg.test_pipeline[1] == dict(type='Resize', scale=(2048, 512), keep_ratio=True)
    assert (cfg.val_evaluator.type, cfg.val_evaluator.iou_metrics) == ('IoUMetric', ['mIoU'])
    # sizes: exact counts, and the published rounded numbers
    model = _ade_model(arch)
    n_bb, n = _n(model.backbone), _n(model)
    assert (n_bb, round(n_bb / 1e6, 2)) == BACKBONE_PARAMS[arch]
    assert n == MODEL_PARAMS[arch]
    fused = copy.deepcopy(model.backbone).reparameterize()
    n_fused = n - n_bb + _n(fused)
    exact, published = MODEL_PARAMS_REPARAM[arch]
    assert n_fused == exact and abs(n_fused / 1e6 - published) < 0.07


def _sample(h, w, num_classes, ori=None):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    s = SegDataSample()
    ori = ori or (h, w)
    s.set_metainfo(dict(img_shape=(h, w), ori_shape=ori, pad_shape=(h, w)))
    label = torch.randint(0, num_classes, (1, h, w))
    label[:, :5] = 255
    s.gt_sem_seg = PixelData(data=label)
    return s


@pytest.mark.parametrize('arch', 'sbl')
def test_loss_and_predict_non_multiple_of_32(arch, registry):
    model = _ade_model(arch)
    model.data_preprocessor.size = (68, 100)  # instead of the recipe's 512x512 (test cost)
    # training batch: 68x100 and 40x52, padded to 68x100 (image 0, label 255)
    data = dict(inputs=[torch.randint(0, 256, (3, 68, 100), dtype=torch.uint8),
                        torch.randint(0, 256, (3, 40, 52), dtype=torch.uint8)],
                data_samples=[_sample(68, 100, 150), _sample(40, 52, 150)])
    model.train()
    data = model.data_preprocessor(data, True)
    assert tuple(data['inputs'].shape) == (2, 3, 68, 100)
    assert (data['data_samples'][1].gt_sem_seg.data[:, 40:] == 255).all()
    assert (data['data_samples'][1].gt_sem_seg.data[:, :, 52:] == 255).all()
    losses = model.loss(data['inputs'], data['data_samples'])
    loss = losses['decode.loss_ce']
    assert loss.ndim == 0 and torch.isfinite(loss) and 3.0 < loss.item() < 8.0  # ~ln(150)
    loss.backward()
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > 0.9 * len(grads)
    # whole-image inference on a 100x140 input predicted back at its original 75x105 size
    model.eval()
    with torch.no_grad():
        x = model.data_preprocessor(dict(inputs=[torch.randint(0, 256, (3, 100, 140),
                                                               dtype=torch.uint8)],
                                         data_samples=[_sample(100, 140, 150, (75, 105))]))
        out = model.predict(x['inputs'], x['data_samples'])
    assert tuple(out[0].seg_logits.data.shape) == (150, 75, 105)
    pred = out[0].pred_sem_seg.data
    assert tuple(pred.shape) == (1, 75, 105) and 0 <= pred.min() and pred.max() < 150


def test_imagenet_checkpoint_initialises_the_backbone(tmp_path, registry):
    """The configs' ``init_cfg`` loads an ImageNet (classification-layout) EnFormer-S
    checkpoint: equal-shape tensors copied, per-centre ones adapted (first n values, then
    the mean), the dense-only ``post_norm{0,1,2}`` left at their init."""
    from enformer_core import create_model
    src = {k[len('backbone.'):]: v for k, v in create_model('enformer_s').state_dict().items()
           if k.startswith('backbone.')}
    ckpt = tmp_path / 'enformer-s_in1k.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in src.items()}}, ckpt)
    cfg = _cfg(ADE['s'])
    cfg.model.backbone.init_cfg.checkpoint = str(ckpt)
    backbone = registry.build(cfg.model.backbone)
    backbone.init_weights()
    own = backbone.state_dict()
    adapted = [k for k in own if k in src and src[k].shape != own[k].shape]
    copied = [k for k in own if k in src and src[k].shape == own[k].shape]
    assert len(copied) > 500 and all(torch.equal(own[k], src[k]) for k in copied)
    assert adapted and all(k.endswith(('sim_alpha', 'sim_beta')) for k in adapted)
    for k in adapted:
        n = src[k].shape[0]  # 36 -> 144 centres (6^2 -> 12^2) etc.
        assert torch.equal(own[k][:n], src[k])
        assert torch.allclose(own[k][n:], src[k].float().mean().expand(own[k].shape[0] - n))
    assert sorted(k for k in own if k not in src) == [f'post_norm{i}.{p}' for i in range(3)
                                                      for p in ('bias', 'weight')]
