"""The repository stands on its own: nothing tracked points outside it, every Markdown link
resolves inside it, and the package's files stay small enough to read."""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tracked_text_files():
    out = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, check=True)
    files = [ROOT / p for p in out.stdout.decode().split('\0') if p]
    texts = []
    for f in files:
        if not f.is_file() or f.suffix in ('.png', '.jpg', '.gz', '.pth'):
            continue
        try:
            texts.append((f, f.read_text(encoding='utf-8')))
        except UnicodeDecodeError:
            continue
    return texts


TEXTS = tracked_text_files()
#: the folders beside the development checkout that a user's clone never has (the pattern is
#: split so that this file does not match itself)
OUTSIDE = re.compile('sha' 'red/spec|/work/' '(?:main|sha' 'red)')


def test_nothing_tracked_refers_to_a_path_outside_the_repository():
    bad = []
    for path, text in TEXTS:
        for m in re.finditer(r'(?<![\w/.])((?:\.\./)+)([\w.-]+(?:/[\w.-]+)*)', text):
            target = (path.parent / (m.group(1) + m.group(2))).resolve()
            if ROOT not in target.parents and target != ROOT:
                bad.append(f'{path.relative_to(ROOT)}: {m.group(0)}')
        for m in re.finditer(OUTSIDE, text):
            bad.append(f'{path.relative_to(ROOT)}: {m.group(0)}')
    assert not bad, 'references outside the repository:\n' + '\n'.join(bad)


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r'[`*_]|\[([^\]]*)\]\([^)]*\)', lambda m: m.group(1) or '', heading)
    text = re.sub(r'[^\w\- ]', '', text.strip().lower())
    return text.replace(' ', '-')


def _anchors(md: str) -> set:
    prose = re.sub(r'^```.*?^```', '', md, flags=re.M | re.S)  # no headings inside code blocks
    return {_slug(h) for h in re.findall(r'^#+\s+(.*)$', prose, flags=re.M)}


MARKDOWN = [(p, t) for p, t in TEXTS if p.suffix == '.md']


@pytest.mark.parametrize('path,text', MARKDOWN, ids=[str(p.relative_to(ROOT)) for p, _ in MARKDOWN])
def test_every_markdown_link_resolves_inside_the_repository(path, text):
    bad = []
    for target in re.findall(r'\]\(([^)\s]+)\)', text):
        if re.match(r'[a-z]+://|mailto:', target):
            continue
        file_part, _, anchor = target.partition('#')
        dest = (path.parent / file_part).resolve() if file_part else path
        if ROOT not in dest.parents and dest != ROOT:
            bad.append(f'{target}: outside the repository')
        elif not dest.exists():
            bad.append(f'{target}: no such file')
        elif anchor and dest.suffix == '.md' and anchor not in _anchors(dest.read_text()):
            bad.append(f'{target}: no heading with anchor #{anchor}')
    assert not bad, f'{path.relative_to(ROOT)}:\n' + '\n'.join(bad)


def test_package_files_stay_under_400_lines():
    long = [f'{p.relative_to(ROOT)}: {t.count(chr(10))} lines' for p, t in TEXTS
            if p.suffix == '.py' and 'enformer_core' in p.parts and t.count('\n') > 400]
    assert not long, long


def test_readme_is_the_front_door():
    readme = (ROOT / 'README.md').read_text()
    assert readme.count('\n') <= 150
    first = readme.split('```bash', 1)[1].split('```', 1)[0]
    assert 'make demo' in first and 'make test' in first   # the two set-up commands first
    ci = (ROOT / '.ci' / 'run').read_text()
    assert 'make test' in ci                                 # CI runs the README's command
