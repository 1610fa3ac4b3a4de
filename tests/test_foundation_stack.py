"""The installed OpenMMLab stack: compiled mmcv ops, registries, weights-only resume, gloo."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import enformer_core
from enformer_core.models import EnFormer

ASSETS = Path(__file__).parent / 'assets'


def test_mmcv_roi_align_forward_backward_on_cpu():
    from mmcv.ops import roi_align
    # feature value = x coordinate, so bilinear samples average to the bin's mean x
    feat = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 8, 8).contiguous().requires_grad_()
    rois = torch.tensor([[0.0, 0.0, 0.0, 8.0, 8.0]])
    out = roi_align(feat, rois, (2, 2), 1.0, 2, 'avg', True)
    assert torch.allclose(out, torch.tensor([[[[1.5, 5.5], [1.5, 5.5]]]]))
    out.sum().backward()
    # every output is a convex combination of inputs: the gradient mass is the output count
    assert torch.isclose(feat.grad.sum(), torch.tensor(4.0))


def test_mmcv_batched_nms_on_cpu():
    from mmcv.ops import batched_nms
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]],
                         dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 0, 1, 0])
    dets, keep = batched_nms(boxes, scores, labels, dict(type='nms', iou_threshold=0.5))
    assert keep.tolist() == [0, 2, 3]  # box 1 overlaps box 0 in class 0; box 2 is class 1
    assert dets.shape == (3, 5)


@pytest.mark.parametrize('scope', ['mmpretrain', 'mmdet', 'mmseg'])
def test_backbone_builds_by_type_in_every_scope(scope):
    import importlib
    registry = importlib.import_module(f'{scope}.registry').MODELS
    # registered once, in MMEngine's root registry, which every toolbox registry falls back to
    assert 'EnFormer' in enformer_core.registered()['model']
    assert 'EnFormer' not in registry.module_dict and registry.get('EnFormer') is EnFormer
    model = registry.build(dict(type='EnFormer', arch='s', clustering='detection',
                                out_indices=(0, 1, 2, 3), gap_before_final_norm=False))
    assert isinstance(model, EnFormer)
    outs = model.eval()(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [40, 80, 160, 320]


@pytest.mark.slow
def test_resume_with_weights_only_loading(tmp_path, monkeypatch):
    sys.path.insert(0, str(ASSETS))
    from toy_runner import make_cfg
    from mmengine.runner import Runner

    seen = []
    original = torch.load

    def recording_load(*args, **kwargs):
        seen.append(kwargs.get('weights_only', 'default'))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, 'load', recording_load)
    runner = Runner.from_cfg(make_cfg(str(tmp_path), max_epochs=1))
    runner.train()
    ckpt = tmp_path / 'epoch_1.pth'
    assert ckpt.exists()
    trained = {k: v.clone() for k, v in runner.model.state_dict().items()}

    cfg = make_cfg(str(tmp_path), max_epochs=2)
    cfg.resume, cfg.load_from = True, str(ckpt)
    resumed = Runner.from_cfg(cfg)
    resumed.train()
    # weights-only stayed on (torch >= 2.6 default, or explicitly True)
    assert seen and all(w in ('default', True) for w in seen)
    assert torch.__version__ >= '2.6'
    assert resumed.iter == 2 * 8 and resumed.epoch == 2
    # the resumed run started from the saved weights (then trained further)
    assert any(not torch.equal(trained[k], v) for k, v in resumed.model.state_dict().items())


@pytest.mark.slow
def test_two_process_gloo_torchrun(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
           '--master_port', '29517', str(ASSETS / 'toy_runner.py'), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = [(tmp_path / f'rank{r}.txt').read_text().split() for r in (0, 1)]
    assert lines[0][0] == lines[1][0] == '2'        # world size
    assert lines[0][1] == '4'                        # 64 samples / (2 ranks x 8) per epoch
    assert lines[0][2] == lines[1][2]                # DDP kept the replicas identical
