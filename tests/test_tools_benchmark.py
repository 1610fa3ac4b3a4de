"""tools/analysis/benchmark.py: 2-iteration CPU smoke."""
import json

import pytest


@pytest.mark.slow
def test_benchmark_smoke_writes_json_and_markdown(load_tool, tmp_path, capsys):
    out = tmp_path / 'bench.json'
    load_tool('tools/analysis/benchmark.py').main(
        ['enformer_s', '--batch', '2', '--shape', '64', '--warmup', '1', '--iters', '2',
         '--forms', 'train-graph', 'deploy', '--train', '--train-batch', '2',
         '--train-iters', '1', '--train-warmup', '0', '--sweep', '64', '96',
         '--threads', '1', '--no-progress', '--json', str(out)])
    text = capsys.readouterr().out
    assert 'img/s' in text and 'threads' in text
    data = json.loads(out.read_text())
    assert data['machine']['threads'] == 1
    rows = {r['form']: r for r in data['results']}
    assert set(rows) == {'train-graph', 'deploy'}
    for r in rows.values():
        ev = r['eval']
        assert ev['batch'] == 2 and ev['iters'] == 2 and ev['img_s'] > 0
        assert r['shape'] == [64, 64]
    tr = rows['train-graph']['train']
    assert tr['batch'] == 2 and tr['mean_s'] > 0
    assert tr['peak_step_mb'] > 0 and tr['peak_mem_mb'] > tr['state_mb'] > 0
    sweep = rows['train-graph']['sweep']
    assert [s['shape'] for s in sweep] == [[64, 64], [96, 96]]
    assert sweep[1]['gflops'] > 2 * sweep[0]['gflops']   # cost grows with the pixels


def test_model_zoo_markdown(load_tool):
    bench = load_tool('tools/analysis/benchmark.py')
    cx = dict(params=8_531_184, params_paper_mi=8_506_224 / 2 ** 20, gflops=1.13696)
    ev = dict(batch=32, warmup=3, iters=10, img_s=41.234, sgemm_share=0.5)
    rows = [dict(model='enformer_s', form='train-graph', complexity=cx, eval=ev),
            dict(model='enformer_s', form='deploy', complexity=cx, eval=dict(ev, img_s=50.0)),
            dict(model='coc_tiny', form='train-graph', complexity=dict(cx, params_paper_mi=5.3),
                 eval=ev),
            dict(model='coc_tiny', form='deploy', skipped='no reparameterize()')]
    machine = dict(cpu='X', threads=2, nproc=2, loadavg=[1.0], torch='2')
    rates = dict(sgemm=100.0, sgemm_onednn=240.0)
    zoo = bench.markdown(rows, machine, 'python tools/analysis/benchmark.py all', rates)
    # sizes, the published top-1 (from the weights table), both forms, the faster form's share
    assert '| enformer_s | 8,531,184 | 8.11 M | 1.137 | 78.9 | 41.2 | 50.0 | 50 % |' in zoo
    assert '| coc_tiny | 8,531,184 | 5.30 M | 1.137 | 73.2 | 41.2 | n/a | 50 % |' in zoo
    assert 'at 100 GFLOP/s and oneDNN fp32 at 240 GFLOP/s' in zoo
    assert 'python tools/analysis/benchmark.py all' in zoo
