"""No silent failure on odd inputs (docs/reliability.md): empty batches, EXIF-rotated JPEGs,
checkpoints of another variant through init_cfg (a full mmdet config) and the cluster
visualiser."""
from pathlib import Path

import numpy as np
import pytest
import torch

import enformer_core
from enformer_core import CheckpointError, create_model

ROOT = Path(__file__).resolve().parents[1]

#: the dense backbones as the shipped detection / segmentation configs build them
DENSE_CONFIGS = [f'detection/configs/_base_/models/mask-rcnn_{m}_fpn.py'
                 for m in ('enformer-s', 'coc-small', 'fec-small')] + \
                [f'segmentation/configs/_base_/models/fpn_{m}.py'
                 for m in ('enformer-s', 'coc-small', 'fec-small')]


# ------------------------------------------------------------------------------ empty batches
@pytest.mark.parametrize('name', enformer_core.list_models())
def test_empty_batch_classifier(name, one_thread):
    model = create_model(name)
    for train in (True, False):
        model.train(train)
        x = torch.randn(0, 3, 64, 64, requires_grad=train)
        with torch.set_grad_enabled(train):
            y = model(x)
        assert y.shape == (0, model.head.fc.out_features), (name, train)
        if train:
            model.zero_grad(set_to_none=True)
            y.sum().backward()
            assert x.grad is not None and x.grad.shape == x.shape
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            assert grads and all(torch.count_nonzero(g) == 0 for g in grads)


@pytest.mark.parametrize('path', DENSE_CONFIGS, ids=lambda p: Path(p).stem)
def test_empty_batch_dense_backbone(path, one_thread):
    from mmengine.config import Config
    from mmengine.registry import MODELS
    cfg = Config.fromfile(str(ROOT / path)).model.backbone
    cfg.pop('init_cfg', None)
    backbone = MODELS.build(cfg)
    backbone.eval()
    with torch.no_grad():
        ref = [o.shape for o in backbone(torch.randn(1, 3, 64, 64))]
    assert len(ref) == 4
    for train in (True, False):
        backbone.train(train)
        x = torch.randn(0, 3, 64, 64, requires_grad=train)
        with torch.set_grad_enabled(train):
            outs = backbone(x)
        assert [tuple(o.shape) for o in outs] == [(0,) + tuple(s[1:]) for s in ref]
        if train:
            sum(o.sum() for o in outs).backward()
            assert x.grad is not None and x.grad.shape == x.shape


# ------------------------------------------------------------------------- EXIF orientation
def _exif_jpeg(path, h=48, w=80, orientation=6):
    """A JPEG stored as (h, w) with an EXIF orientation tag (6: rotate 90 degrees clockwise
    to display, as phones write portrait photos)."""
    from PIL import Image
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 60)], -1).astype(np.uint8)
    rgb[:8, :8] = (255, 0, 0)  # a red top-left corner: shows where the rotation put it
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, quality=95, exif=exif.tobytes())
    return rgb


def test_exif_rotated_jpeg_is_read_like_the_pipelines(tmp_path, monkeypatch):
    from mmcv.transforms import LoadImageFromFile
    from PIL import Image, ImageOps

    from enformer_core.datasets import read_image
    path = tmp_path / 'portrait.jpg'
    _exif_jpeg(path)
    assert Image.open(path).getexif()[0x0112] == 6
    ours = read_image(str(path))
    assert ours.shape == (80, 48, 3)  # rotated: stored 48x80
    # mmcv's LoadImageFromFile (the training/test pipelines; BGR) gives the same pixels
    bgr = LoadImageFromFile()(dict(img_path=str(path)))['img']
    assert np.array_equal(ours, bgr[..., ::-1])
    # the red corner went to the top right (90 degrees clockwise)
    assert ours[2, -3, 0] > 200 and ours[2, -3, 1] < 60 and ours[2, 2, 0] < 200
    # without mmcv, Pillow decodes it and applies the orientation the same way
    monkeypatch.setitem(__import__('sys').modules, 'mmcv', None)
    fallback = read_image(str(path))
    assert fallback.shape == ours.shape
    assert np.abs(fallback.astype(int) - ours.astype(int)).mean() < 2.0
    with Image.open(path) as im:
        assert np.array_equal(fallback, np.asarray(ImageOps.exif_transpose(im).convert('RGB')))


def test_vis_clusters_reads_the_exif_rotated_image(load_tool, tmp_path, monkeypatch,
                                                   one_thread):
    import enformer_core.datasets as ds
    path = tmp_path / 'portrait.jpg'
    _exif_jpeg(path)
    seen = []
    prepare = ds.prepare_image

    def recording(rgb, *args, **kwargs):
        seen.append(rgb.shape)
        return prepare(rgb, *args, **kwargs)

    monkeypatch.setattr(ds, 'prepare_image', recording)
    out = tmp_path / 'c.png'
    load_tool('tools/visualization/vis_clusters.py').main(
        ['enformer_s', 'none', str(path), '--size', '64', '--stages', '3', '--out', str(out)])
    assert seen == [(80, 48, 3)] and out.is_file()


# ------------------------------------------------------------- checkpoints of another variant
def test_vis_clusters_refuses_a_checkpoint_of_another_variant(load_tool, tmp_path, one_thread):
    ckpt = tmp_path / 'enformer_b.pth'
    torch.save({'state_dict': create_model('enformer_b').state_dict()}, ckpt)
    img = tmp_path / 'img.jpg'
    _exif_jpeg(img, orientation=1)
    out = tmp_path / 'clusters.png'
    with pytest.raises(SystemExit) as exc:
        load_tool('tools/visualization/vis_clusters.py').main(
            ['enformer_s', str(ckpt), str(img), '--size', '64', '--out', str(out)])
    msg = str(exc.value.code)
    assert msg.startswith('error:') and 'does not fit' in msg and 'of another shape' in msg
    assert 'backbone.stem.conv1.weight' in msg
    assert not out.exists()


def test_init_cfg_of_another_variant_in_a_full_mmdet_config(tmp_path, one_thread):
    """Mask R-CNN EnFormer-S built from its shipped config with an EnFormer-B ImageNet
    checkpoint in the backbone's init_cfg: init_weights (what the Runner calls) raises."""
    from mmengine.config import Config
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    ckpt = tmp_path / 'enformer-b_in1k.pth'
    torch.save({'meta': {}, 'state_dict': create_model('enformer_b').state_dict()}, ckpt)
    cfg = Config.fromfile(
        str(ROOT / 'detection/configs/enformer/mask-rcnn_enformer-s_fpn_1x_coco.py'))
    assert cfg.model.backbone.init_cfg.type == 'Pretrained'
    cfg.model.backbone.init_cfg.checkpoint = str(ckpt)
    init_default_scope('mmdet')
    detector = MODELS.build(cfg.model)
    with pytest.raises(CheckpointError) as err:
        detector.init_weights()
    msg = str(err.value)
    assert 'does not fit' in msg and 'of another shape' in msg and 'stem.conv1.weight' in msg
