"""tools/analysis/benchmark.py: matmul-rate shares, load average, --dtype and --compare-to
(smoke runs at tiny sizes; no timing is asserted)."""
import json
import os

import pytest


@pytest.mark.slow
def test_share_of_sgemm_load_average_and_dtypes(load_tool, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, 'getloadavg', lambda: (9.0, 9.0, 9.0))  # a busy machine
    out = tmp_path / 'bench.json'
    load_tool('tools/analysis/benchmark.py').main(
        ['enformer_s', '--batch', '2', '--shape', '64', '--warmup', '0', '--iters', '1',
         '--forms', 'deploy', '--dtype', 'fp32', 'bf16', 'int8', 'int8-static', '--threads', '1',
         '--no-progress', '--json', str(out)])
    text = capsys.readouterr().out
    assert 'WARNING: load average 9.00' in text and 'of sgemm' in text
    data = json.loads(out.read_text())
    assert data['machine']['loadavg'] == [9.0, 9.0, 9.0] and data['load_warning']
    assert data['machine']['native'].startswith('native kernels: ')   # what ran, named
    assert data['machine']['native'] in text
    rates = data['gemm_gflop_s']
    assert rates['n'] == 2048 and rates['sgemm'] > 0 and rates['bf16'] > 0
    rows = {r['dtype']: r for r in data['results']}
    assert set(rows) == {'fp32', 'bf16', 'int8', 'int8-static'}
    assert 'int8-static' in text
    for r in rows.values():
        ev = r['eval']
        assert ev['gmacs_per_img'] > 0 and ev['gflop_s'] == pytest.approx(
            2 * ev['gmacs_per_img'] * ev['img_s'])
        assert ev['sgemm_share'] == pytest.approx(ev['gflop_s'] / rates['sgemm'])
    # each CPU form reports its logit error against the fp32 model of the same form
    for dtype in ('bf16', 'int8', 'int8-static'):
        err = rows[dtype]['vs_fp32']
        assert 0 <= err['mean_abs'] <= err['max_abs'], dtype
    assert 'vs_fp32' not in rows['fp32']


def test_kernel_benchmark_compares_every_kernel_with_pytorch(load_tool, capsys):
    from enformer_core.ops import native
    if not native.available():
        pytest.skip(native.describe())
    load_tool('tools/analysis/benchmark_kernels.py').main(['--iters', '2', '--batch', '1'])
    rows = [line for line in capsys.readouterr().out.splitlines()[2:] if line.strip()]
    assert len(rows) == 9
    for row in rows:                     # step, kernel ms, PyTorch ms, ratio, difference
        kernel, ops, ratio = (float(v) for v in row[58:].split()[:3])
        assert kernel > 0 and ops > 0 and ratio > 0
    assert all(r.split()[-1] in ('-', 'codes') or float(r.split()[-1]) < 1e-4 for r in rows)


@pytest.mark.slow
def test_compare_to_a_revision_prints_ratios(load_tool, tmp_path, capsys):
    out = tmp_path / 'cmp.json'
    load_tool('tools/analysis/benchmark.py').main(
        ['enformer_s', '--batch', '1', '--shape', '64', '--iters', '2', '--rounds', '1',
         '--train', '--train-batch', '1', '--threads', '1', '--no-progress', '--no-gemm',
         '--compare-to', 'HEAD', '--json', str(out)])
    text = capsys.readouterr().out
    assert '--compare-to HEAD' in text and 'this tree' in text
    cmp = json.loads(out.read_text())['compare_to']
    (res,) = cmp['results']
    base, ours = res['per_tree'].values()
    assert base['eval_speedup'] == 1.0 and base['memory_ratio'] == 1.0
    for row in (base, ours):
        assert row['eval_img_s'] > 0 and row['train_median_s'] > 0 and row['peak_step_mb'] > 0
    assert ours['eval_speedup'] > 0 and ours['memory_ratio'] > 0


@pytest.mark.slow
def test_deploy_accuracy_tool_on_the_demo_test_set(load_tool, repo_root, tmp_path):
    cfg = repo_root / 'classification/configs/demo/enformer-s_fashion-mnist-64px.py'
    if not os.path.isdir('/usr/share/datasets/fashion-mnist'):
        pytest.skip('Fashion-MNIST is not on this machine')
    out = tmp_path / 'acc.json'
    res = load_tool('tools/analysis/deploy_accuracy.py').main(
        [str(cfg), 'none', '--dtype', 'fp32', 'bf16', 'int8-static', '--max-batches', '1',
         '--calibration-batches', '1', '--keep-float', 'backbone.stem.conv1', '--sensitivity',
         '--json', str(out)])   # (--keep-float: the int8 forms only; bf16 takes no patterns)
    assert res['images'] == 250 and json.loads(out.read_text())['forms'].keys() == {
        'fp32', 'bf16', 'int8-static'}
    assert res['calibration_images'] == 250      # training images, not the scored ones
    fp32, bf16 = res['forms']['fp32'], res['forms']['bf16']
    assert fp32['top1_agreement'] == 1.0 and fp32['max_abs_logit_diff'] < 1e-4
    assert bf16['top1_agreement'] > 0.9 and 'top1_x' in bf16
    assert res['forms']['int8-static']['top1_agreement'] > 0.9
    rows = json.loads(out.read_text())['sensitivity']          # one row per group of layers
    assert rows[0]['pattern'] is None and 'backbone.stem.conv1' in [r['pattern'] for r in rows]
    assert sum(r['layers'] for r in rows) == 95
