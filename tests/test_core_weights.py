"""From the published weights to a model: files in the release's three formats (timm
``.pth.tar``, mmcv 1.x mmdet / mmseg checkpoints), served by a local HTTP server that plays the
GitHub release, downloaded into a temporary TORCH_HOME, converted and loaded strictly.
Nothing here reaches the internet."""
import dataclasses
import io
import os
import subprocess
import sys
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import torch

from enformer_core import PRETRAINED_CFGS, WeightsUnavailableError, create_model
from enformer_core.checkpoint import load_checkpoint
from enformer_core.hub import resolve_file
from enformer_core.models import EnFormer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tests' / 'assets'))
from published_files import ReleaseServer, closed_port_url, save_mm, save_timm  # noqa: E402

DET_CONFIG = 'detection/configs/enformer/mask-rcnn_enformer-s_fpn_1x_coco.py'
SEG_CONFIG = 'segmentation/configs/enformer/fpn_enformer-s_8xb2-80k_ade20k-512x512.py'
DET_DEMO = 'detection/configs/demo/mask-rcnn_enformer-s_fpn_shapes-demo.py'


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A temporary TORCH_HOME, no $ENFORMER_WEIGHTS, no proxy for 127.0.0.1."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.setattr(torch.hub, '_hub_dir', None)
    monkeypatch.delenv('ENFORMER_WEIGHTS', raising=False)
    monkeypatch.setenv('NO_PROXY', '127.0.0.1,localhost')
    monkeypatch.setenv('no_proxy', '127.0.0.1,localhost')
    return tmp_path / 'torch_home' / 'hub' / 'checkpoints'


@pytest.fixture(scope='module')
def source():
    torch.manual_seed(0)
    model = create_model('enformer_s').eval()
    with torch.no_grad():  # non-trivial values where the init is constant
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture
def release(tmp_path, source):
    folder = tmp_path / 'release'
    folder.mkdir()
    save_timm(source, folder / 'enformer_small.pth.tar')
    with ReleaseServer(folder) as srv:
        yield srv


def _point_table_at(monkeypatch, name, url):
    monkeypatch.setitem(PRETRAINED_CFGS, name, dataclasses.replace(PRETRAINED_CFGS[name], url=url))


def _same_outputs(a, b, size=64):
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_pretrained_true_downloads_converts_loads_and_then_uses_the_cache(
        hub, release, source, monkeypatch):
    url = release.url('enformer_small.pth.tar')
    _point_table_at(monkeypatch, 'enformer_s', url)
    with redirect_stderr(io.StringIO()) as log:  # (not capsys: loggers keep the stream)
        model = create_model('enformer_s', pretrained=True)
    err = log.getvalue()
    assert 'downloading enformer_small.pth.tar' in err          # progress on stderr
    assert (hub / 'enformer_small.pth.tar').is_file()
    assert not [p for p in hub.iterdir() if p.name.startswith('.download-')]
    assert release.hits['/enformer_small.pth.tar'] == 1
    assert _same_outputs(model, source)
    assert model.pretrained_cfg['url'] == url
    again = create_model('enformer_s', pretrained=True)
    assert release.hits['/enformer_small.pth.tar'] == 1          # second call: the cache
    assert _same_outputs(again, source)
    # a new head for another number of classes, the rest strict
    ten = create_model('enformer_s', pretrained=True, num_classes=10)
    assert ten.head.fc.out_features == 10 and release.hits['/enformer_small.pth.tar'] == 1
    # pretrained=URL works the same way
    assert _same_outputs(create_model('enformer_s', pretrained=url), source)


def test_enformer_weights_folder_is_used_first(hub, release, tmp_path, monkeypatch):
    folder = tmp_path / 'offline_weights'
    folder.mkdir()
    torch.manual_seed(5)
    other = create_model('enformer_s').eval()
    save_timm(other, folder / 'enformer_small.pth.tar')
    monkeypatch.setenv('ENFORMER_WEIGHTS', str(folder))
    _point_table_at(monkeypatch, 'enformer_s', release.url('enformer_small.pth.tar'))
    model = create_model('enformer_s', pretrained=True)
    assert release.hits['/enformer_small.pth.tar'] == 0
    assert _same_outputs(model, other)
    assert not hub.exists() or not any(hub.iterdir())


def test_offline_or_missing_file_names_the_url_and_the_folder(hub, release, tmp_path,
                                                              monkeypatch):
    refused = closed_port_url('enformer_small.pth.tar')
    _point_table_at(monkeypatch, 'enformer_s', refused)
    with pytest.raises(WeightsUnavailableError) as err:
        create_model('enformer_s', pretrained=True)
    msg = str(err.value)
    assert refused in msg and 'ENFORMER_WEIGHTS' in msg and 'enformer_small.pth.tar' in msg
    assert str(hub) in msg
    folder = tmp_path / 'weights'
    monkeypatch.setenv('ENFORMER_WEIGHTS', str(folder))
    missing = release.url('enformer_base.pth.tar')                  # a 404
    with pytest.raises(WeightsUnavailableError, match='404') as err:
        resolve_file(missing)
    assert missing in str(err.value) and str(folder / 'enformer_base.pth.tar') in str(err.value)
    assert not hub.exists() or not any(hub.iterdir())              # no half file left


def test_init_cfg_of_a_dense_backbone_reads_a_url(hub, release, source):
    det = EnFormer('s', clustering='detection', out_indices=(0, 1, 2, 3),
                   gap_before_final_norm=False,
                   init_cfg=dict(type='Pretrained', prefix='backbone.',
                                 checkpoint=release.url('enformer_small.pth.tar')))
    det.init_weights()
    assert release.hits['/enformer_small.pth.tar'] == 1
    assert torch.equal(det.stages[2].blocks[3].ffn.fc1.weight,
                       source.backbone.stages[2].blocks[3].ffn.fc1.weight)
    assert torch.equal(det.stem.conv1.weight, source.backbone.stem.conv1.weight)


def _build(config):
    from enformer_core.analysis.loading import load_model
    return load_model(str(ROOT / config)).model


@pytest.mark.parametrize('config,name,kind', [
    (DET_CONFIG, 'enformer_small_mask-rcnn.pth', 'mmdet'),
    (SEG_CONFIG, 'enformer_small_fpn.pth', 'mmseg')])
def test_published_detector_and_segmentor_load_strictly_from_the_table(
        hub, tmp_path, monkeypatch, config, name, kind):
    torch.manual_seed(1)
    src = _build(config)
    folder = tmp_path / 'release'
    folder.mkdir()
    classes = [f'c{i}' for i in range(80 if kind == 'mmdet' else 150)]
    save_mm(src, folder / name, classes, kind)
    table = 'enformer_s.mask_rcnn_coco' if kind == 'mmdet' else 'enformer_s.fpn_ade20k'
    assert PRETRAINED_CFGS[table].file_name == name and PRETRAINED_CFGS[table].file_format == kind
    with ReleaseServer(folder) as srv:
        _point_table_at(monkeypatch, table, srv.url(name))
        dst = _build(config)
        report = load_checkpoint(dst, PRETRAINED_CFGS[table].url, strict=True)
        assert srv.hits['/' + name] == 1
    assert report.fits and report.converted_from == 'published EnFormer'
    theirs, ours = src.state_dict(), dst.state_dict()
    assert theirs.keys() == ours.keys()
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)
    assert any(k.startswith('neck.') for k in ours)


@pytest.mark.slow
def test_tools_test_evaluates_a_published_mmdet_checkpoint_url(hub, tmp_path):
    """tools/test.py CONFIG URL: the demo Mask R-CNN in the mmdet 2.x layout, on 3 images."""
    from enformer_core.datasets.shapes_coco import make_shapes_coco
    data = tmp_path / 'shapes'
    make_shapes_coco(data, num_train=1, num_val=3, image_size=(128, 128), seed=3, preview=False)
    torch.manual_seed(2)
    folder = tmp_path / 'release'
    folder.mkdir()
    save_mm(_build(DET_DEMO), folder / 'demo_mask-rcnn.pth',
            ('rectangle', 'ellipse', 'triangle'))
    with ReleaseServer(folder) as srv:
        cmd = [sys.executable, str(ROOT / 'tools' / 'test.py'), str(ROOT / DET_DEMO),
               srv.url('demo_mask-rcnn.pth'), '--work-dir', str(tmp_path / 'work'),
               '--cfg-options', f'test_dataloader.dataset.data_root={data}',
               f'test_evaluator.ann_file={data}/annotations/instances_val.json',
               'model.test_cfg.rcnn.score_thr=0.0']
        env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
        hits = srv.hits['/demo_mask-rcnn.pth']
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert hits == 1
    assert 'converted from the published EnFormer layout' in text, text[-3000:]
    assert 'metrics: {' in text and 'coco/bbox_mAP' in text
