"""The first set-up compiles mmcv and torch-scatter for 15-35 minutes: tools/build_progress.sh
shows that it is alive (compile units done of the total, elapsed and usual time, the log's
path), fed here with fake builds instead of a real compilation."""
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'tools' / 'build_progress.sh'
ANSI = re.compile(r'\x1b\[[0-9;]*m')


def _run(tmp_path, build, *options, label='mmcv==2.1.0'):
    log = tmp_path / 'logs' / 'mmcv.log'
    env = dict(os.environ, BUILD_PROGRESS_INTERVAL='1')
    out = subprocess.run(['bash', str(SCRIPT), *options, label, str(log), '--', 'bash', '-c',
                          build], capture_output=True, text=True, env=env, timeout=60)
    return out.returncode, ANSI.sub('', out.stdout), ANSI.sub('', out.stderr), log


@pytest.mark.slow
def test_ninja_progress_lines_every_interval(tmp_path):
    fake = ('for i in 1 2 3 4; do echo "  [$i/77] /tmp/wrap/g++ -MMD -c src/op$i.cpp -o '
            'op$i.o"; sleep 0.8; done; echo done')
    rc, out, err, log = _run(tmp_path, fake, '--total', '77', '--expect', '15-30 min on 2 cores')
    assert rc == 0, out + err
    lines = out.splitlines()
    assert lines[0] == (f'[setup] building mmcv==2.1.0 (77 compile units, usually 15-30 min '
                        f'on 2 cores); full log: {log}')
    progress = [ln for ln in lines if 'elapsed' in ln]
    assert len(progress) >= 2                                   # one a second here
    assert re.search(r'mmcv==2\.1\.0: [1-4]/77 compile units, 0m0[0-9]s elapsed '
                     r'\(usually 15-30 min on 2 cores\); log: ', progress[0])
    counts = [int(re.search(r': (\d+)/77', ln).group(1)) for ln in progress]
    assert counts == sorted(counts) and counts[-1] >= 3
    assert re.search(r'built in 0m0[2-9]s \(4/77 compile units\)', lines[-1])
    assert log.read_text().count('[') == 4 and 'done' in log.read_text()


def test_compiler_invocations_counted_without_ninja_and_failure_shows_the_log(tmp_path):
    fake = ('echo "gcc -pthread -O2 -c csrc/a.cpp"; echo "g++ -O2 -c csrc/b.cpp"; sleep 1.5; '
            'echo "csrc/c.cpp:1: error: boom"; exit 3')
    rc, out, err, log = _run(tmp_path, fake, label='torch-scatter==2.1.2')
    assert rc == 3
    assert re.search(r'torch-scatter==2\.1\.2: 2 compile units, 0m0[0-9]s elapsed; log: ', out)
    assert 'FAILED (exit 3)' in out and 'error: boom' in err and str(log) in out


def test_quick_build_prints_no_progress_line_and_bad_usage_is_refused(tmp_path):
    rc, out, _, _ = _run(tmp_path, 'true')
    assert rc == 0 and 'elapsed' not in out and 'built in 0m0' in out
    bad = subprocess.run(['bash', str(SCRIPT), 'label-only'], capture_output=True, text=True)
    assert bad.returncode == 2 and 'usage' in bad.stderr


def test_setup_env_builds_through_the_progress_script_after_the_cache_check():
    text = (ROOT / 'tools' / 'setup_env.sh').read_text()
    assert subprocess.run(['bash', '-n', str(ROOT / 'tools' / 'setup_env.sh')]).returncode == 0
    body = text[text.index('build_wheel() {'):text.index('\n}\n', text.index('build_wheel() {'))]
    assert body.index('cached wheel for') < body.index('return') < \
        body.index('tools/build_progress.sh')                   # the cached path is untouched
    assert 'wheel -v ' in body and 'wheel -q ' not in body      # full output goes to the log
    assert '"$CACHE/logs/' in body
    assert 'build_wheel "mmcv==2.1.0" "mmcv-2.1.0-*.whl" 77 ' in text
