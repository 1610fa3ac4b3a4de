"""tools/visualization/vis_clusters.py: assignment maps of every base clustering + consensus."""

import numpy as np
import pytest
import torch

from enformer_core.analysis import collect_assignments, load_model
from enformer_core.datasets import prepare_image



def _image(path, h=80, w=112):
    from PIL import Image
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 64 * 4], -1).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def test_vis_clusters_writes_png(load_tool, tmp_path):
    img = tmp_path / 'img.png'
    _image(img)
    out = tmp_path / 'clusters.png'
    records = load_tool('tools/visualization/vis_clusters.py').main(
        ['enformer_s', 'none', str(img), '--size', '96', '128', '--stages', '0', '2',
         '--out', str(out)])
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    from PIL import Image
    assert min(Image.open(out).size) > 200
    (recs,) = records
    # stage 0 and 2, last block, 2 base clusterings + consensus each
    assert [(r.stage, r.block, r.kind) for r in recs] == [
        (0, 1, 'fuzzy'), (0, 1, 'partitional'), (0, 1, 'consensus'),
        (2, 9, 'fuzzy'), (2, 9, 'partitional'), (2, 9, 'consensus')]
    assert recs[0].points_grid == (14, 14)          # agents in stages 0-1
    assert recs[3].points_grid == (6, 8)            # all pixels of stage 2 (stride 16)
    for r in recs:
        labels, conf = r.labels_and_confidence((96, 128))
        assert labels.shape == conf.shape == (96, 128)
        assert len(np.unique(labels)) <= r.num_centres
        assert labels.min() >= 0 and labels.max() < r.num_centres
    assert recs[0].num_centres == 36 and recs[1].num_centres == 25
    assert recs[2].num_centres == 61
    # partitional maps are hard, soft maps are distributions over the centres
    assert set(torch.unique(recs[1].weights).tolist()) <= {0.0, 1.0}
    assert torch.allclose(recs[0].weights.sum(0), torch.ones(14, 14), atol=1e-5)


def test_assignments_deterministic_and_dense_backbone(tmp_path):
    rgb = _image(tmp_path / 'a.png', 64, 96)
    from enformer_core.models import EnFormer
    det = EnFormer('s', clustering='detection', out_indices=(0, 1, 2, 3),
                   gap_before_final_norm=False).eval()
    x, _ = prepare_image(rgb, (64, 96), (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    a = collect_assignments(det, x, stages=[3], blocks=['all'])
    b = collect_assignments(det, x, stages=[3], blocks=['all'])
    assert len(a) == 4 * 3                          # 4 blocks x (2 base + consensus)
    assert a[0].num_centres == 144 and a[1].num_centres == 100
    assert a[0].points_grid == (2, 3)
    assert all(torch.equal(p.weights, q.weights) for p, q in zip(a, b))
    with pytest.raises(ValueError, match='stage 7 does not exist'):
        collect_assignments(det, x, stages=[7])
    with pytest.raises(ValueError, match='head 9 out of range'):
        collect_assignments(det, x, stages=[3], head=9)


def test_load_model_with_checkpoint(tmp_path):
    lm = load_model('enformer_s')
    path = tmp_path / 'w.pth'
    torch.save({'state_dict': lm.model.state_dict()}, path)
    other = load_model('enformer_s', checkpoint=str(path))
    assert other.notes[0].endswith('690 tensors loaded')  # and nothing missing or unexpected
    for k, v in lm.model.state_dict().items():
        assert torch.equal(v, other.model.state_dict()[k])


def test_load_model_takes_the_configs_data_preprocessor(repo_root):
    """mmpretrain configs put the normalisation in a top-level ``data_preprocessor``; the
    tools' model must normalise as the Runner's does."""
    lm = load_model(str(repo_root / 'classification/configs/demo/enformer-s_fashion-mnist-64px.py'))
    pre = lm.model.data_preprocessor
    mean = torch.tensor(lm.config.data_preprocessor['mean'], dtype=torch.float32)
    assert torch.allclose(pre.mean.flatten(), mean)
    x = {'inputs': [torch.full((3, 64, 64), 255, dtype=torch.uint8)], 'data_samples': None}
    assert pre(x, False)['inputs'].abs().max() < 10   # normalised, not raw 0-255
