"""Export: ONNX with a dynamic batch and image size (onnxruntime within 1e-4 of PyTorch), and
torch.jit.trace that runs at sizes other than the traced one, through enformer_core.export and
tools/deployment/pytorch2onnx.py."""
import importlib.util
import io
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from enformer_core import create_model
from enformer_core import export as ex
from enformer_core.models import clustering

ROOT = Path(__file__).resolve().parents[1]
DET_DEMO = 'detection/configs/demo/mask-rcnn_enformer-s_fpn_shapes-demo.py'
pytest.importorskip('onnxruntime')


@pytest.fixture(scope='module')
def tool():
    path = ROOT / 'tools' / 'deployment' / 'pytorch2onnx.py'
    spec = importlib.util.spec_from_file_location('enformer_tools_pytorch2onnx', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _diffs(text):
    return [float(line.rsplit('= ', 1)[1]) for line in text.splitlines()
            if 'max |diff| =' in line]


@pytest.mark.slow
def test_enformer_s_classifier_dynamic_batch_and_size(tool, tmp_path):
    out = tmp_path / 's.onnx'
    with redirect_stdout(io.StringIO()) as log:
        rc = tool.main(['enformer_s', '--out', str(out), '--shape', '64', '64',
                        '--check-shape', '96', '128', '--jit', str(tmp_path / 's.pt')])
    text = log.getvalue()
    assert rc == 0, text
    assert 'input 1x3x64x64' in text and 'input 3x3x64x64' in text
    assert 'input 2x3x96x128' in text and 'dynamic: batch, height, width' in text
    diffs = _diffs(text)
    assert len(diffs) == 4 and max(diffs) <= 1e-4, text               # 3 ONNX + 1 jit
    import onnx
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ['batch', 3, 'height', 'width']
    traced = torch.jit.load(str(tmp_path / 's.pt'))             # the saved TorchScript file
    with torch.no_grad():
        assert traced(torch.randn(1, 3, 80, 48)).shape == (1, 1000)


@pytest.mark.slow
def test_dense_backbone_of_a_detection_config(tool, tmp_path):
    with redirect_stdout(io.StringIO()) as log:
        rc = tool.main([str(ROOT / DET_DEMO), '--out', str(tmp_path / 'det.onnx'),
                        '--shape', '64', '96'])
    text = log.getvalue()
    assert rc == 0, text
    assert "(backbone)" in text and "['stage0', 'stage1', 'stage2', 'stage3']" in text
    assert max(_diffs(text)) <= 1e-4 and 'input 2x3x96x192' in text


@pytest.mark.slow
@pytest.mark.parametrize('name', ['coc_tiny', 'fec_small', 'clusterformer_tiny'])
def test_baseline_classifiers_export_with_dynamic_size(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name).eval()
    path = str(tmp_path / f'{name}.onnx')
    assert ex.export_onnx(model, path, (1, 3, 64, 64)) == ['logits']
    diffs = ex.onnx_max_abs_diff(path, model, [torch.randn(1, 3, 64, 64),
                                               torch.randn(2, 3, 96, 160)])
    assert max(diffs) <= 1e-4, diffs


def test_jit_trace_in_export_mode_runs_at_other_sizes():
    torch.manual_seed(0)
    model = create_model('enformer_s').eval()
    traced = ex.trace(model, torch.randn(1, 3, 64, 64))
    for shape in ((2, 3, 96, 128), (1, 3, 224, 160)):
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(traced(x), model(x), rtol=1e-5, atol=1e-5)


def test_export_mode_is_exact_and_restores_the_model():
    torch.manual_seed(0)
    model = create_model('enformer_s').eval()
    coords, pool, avg = model.backbone.coords, clustering.pool_tokens, F.adaptive_avg_pool2d
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        ref = model(x)
        with ex.export_mode(model):
            assert clustering.pool_tokens is not pool
            out = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert model.backbone.coords is coords and clustering.pool_tokens is pool
    assert F.adaptive_avg_pool2d is avg


def test_pooling_matrix_matches_adaptive_avg_pool():
    for h, w, oh, ow in ((7, 9, 3, 4), (14, 14, 14, 14), (5, 3, 12, 12), (64, 48, 6, 5)):
        x = torch.randn(2, 3, h, w)
        torch.testing.assert_close(ex.adaptive_avg_pool2d(x, (oh, ow)),
                                   F.adaptive_avg_pool2d(x, (oh, ow)), rtol=1e-6, atol=1e-6)


def test_what_cannot_be_exported_is_a_clear_error(tmp_path):
    with pytest.raises(ex.ExportError, match='neither a create_model classifier'):
        ex.export_onnx(torch.nn.Conv2d(3, 3, 1), str(tmp_path / 'x.onnx'), (1, 3, 32, 32))
