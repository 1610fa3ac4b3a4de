"""The CPU demo config end to end on a tiny generated shapes set: a few Runner training
iterations lower the loss, and tools/test.py on the val split reports COCO bbox + segm mAP."""
import json
import os
import re
import subprocess
import sys

import pytest

from enformer_core.datasets.shapes_coco import make_shapes_coco

DEMO_CONFIG = 'detection/configs/demo/mask-rcnn_enformer-s_fpn_shapes-demo.py'
ITERS = 8

pytestmark = pytest.mark.slow  # end-to-end training runs


@pytest.fixture(scope='module')
def trained(tmp_path_factory, repo_root):
    """A few training iterations of the demo config (Runner) on 2 fixed images."""
    import enformer_core  # noqa: F401
    from mmengine.config import Config
    from mmengine.runner import Runner
    tmp = tmp_path_factory.mktemp('det_demo')
    data_root = tmp / 'shapes'
    make_shapes_coco(data_root, num_train=2, num_val=3, image_size=(128, 160), seed=5,
                     preview=False)
    cfg = Config.fromfile(str(repo_root / DEMO_CONFIG))
    cfg.work_dir = str(tmp / 'work')
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        loader.dataset.data_root = str(data_root)
    cfg.train_dataloader.batch_size = 2
    cfg.train_dataloader.sampler = dict(type='DefaultSampler', shuffle=False)
    cfg.val_evaluator.ann_file = str(data_root / 'annotations' / 'instances_val.json')
    cfg.test_evaluator = cfg.val_evaluator
    # same model/optimizer as the demo; a short iteration loop without the 50-iter warm-up
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=ITERS, val_interval=10 ** 6)
    cfg.param_scheduler = []
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False,
                                        interval=ITERS)
    cfg.log_processor = dict(by_epoch=False)
    runner = Runner.from_cfg(cfg)
    runner.train()
    losses = list(runner.message_hub.get_scalar('train/loss').data[0])
    return dict(cfg=cfg, losses=losses, work_dir=tmp / 'work', data_root=data_root,
                ckpt=tmp / 'work' / f'iter_{ITERS}.pth')


def test_demo_training_lowers_loss(trained):
    losses = trained['losses']
    assert len(losses) == ITERS
    assert all(l == l and l < 1e3 for l in losses)          # finite
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < 0.8 * first, losses
    assert trained['ckpt'].exists()


def test_tools_test_reports_bbox_and_segm_map(trained, repo_root, tmp_path):
    cfg = trained['cfg']
    data_root = trained['data_root']
    ann = data_root / 'annotations' / 'instances_val.json'
    # an 8-iteration model may score every box under the demo's 0.05 threshold, and COCO
    # evaluation of an empty result list prints no metrics: keep every box here
    options = [f'test_dataloader.dataset.data_root={data_root}',
               f'test_evaluator.ann_file={ann}', 'model.test_cfg.rcnn.score_thr=0.0']
    work = tmp_path / 'test_out'
    cmd = [sys.executable, str(repo_root / 'tools' / 'test.py'), str(repo_root / DEMO_CONFIG),
           str(trained['ckpt']), '--work-dir', str(work), '--cfg-options', *options]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    out = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True,
                         timeout=170)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    metrics = {}
    for key in ('bbox_mAP', 'bbox_mAP_50', 'segm_mAP', 'segm_mAP_50'):
        found = re.findall(rf'coco/{key}: (-?[0-9.]+)', text)
        assert found, f'coco/{key} missing from tools/test.py output:\n{text[-3000:]}'
        metrics[key] = float(found[-1])
    # an 8-iteration model is near 0, but COCO eval ran on both tasks and gave numbers in range
    assert all(0.0 <= v <= 1.0 for v in metrics.values()), metrics
    json_files = list(work.rglob('*.json'))
    assert json_files, 'tools/test.py wrote no metrics json'
    assert cfg is not None


def test_vis_det_predictions_draws_gt_and_prediction_panels(trained, tmp_path, load_tool):
    import numpy as np
    from PIL import Image
    tool = load_tool('tools/visualization/vis_det_predictions.py')
    data_root = trained['data_root']
    out = tmp_path / 'pred.png'
    opts = [f'val_dataloader.dataset.data_root={data_root}']
    tool.main([DEMO_CONFIG, str(trained['ckpt']), '--indices', '0', '2', '--cols', '1',
               '--scale', '2', '--score-thr', '0.0', '--out', str(out), '--cfg-options', *opts])
    img = np.asarray(Image.open(out))
    # two rows of (ground truth | prediction) panels of the 128x160 images upscaled 2x,
    # separated by 4-px white gutters
    assert img.shape == (2 * 256 + 3 * 4, 2 * 320 + 2 * 4, 3)
    gt_panel = img[4:260, 4:324]
    assert not (gt_panel == 255).all()          # the image was drawn, not left blank
    with pytest.raises(SystemExit, match='outside the val split'):
        tool.main([DEMO_CONFIG, 'none', '--indices', '99', '--out', str(out),
                   '--cfg-options', *opts])
    with pytest.raises(SystemExit, match='checkpoint'):
        tool.main([DEMO_CONFIG, str(tmp_path / 'missing.pth'), '--out', str(out)])
