"""Test helpers: files in the official release's formats, made from our models, and a local
HTTP server that plays the release (no test reaches the internet).

* :func:`save_timm` - ``enformer_{small,base,large}.pth.tar``: timm's ``{'state_dict', 'arch',
  'epoch', 'args': argparse.Namespace, ...}`` with the official key names;
* :func:`save_mm` - ``enformer_*_mask-rcnn.pth`` / ``enformer_*_fpn.pth``: an mmcv 1.x
  checkpoint ``{'meta': {...}, 'state_dict': {'backbone.<official>', 'neck.', ...},
  'optimizer': {...}}`` of a whole detector / segmentor;
* :class:`ReleaseServer` - ``http.server`` on 127.0.0.1 (ephemeral port) in a thread, serving a
  folder and counting the requests per path.
"""
from __future__ import annotations

import argparse
import collections
import functools
import http.server
import threading
from pathlib import Path

import torch

from enformer_core.models.enformer import ENFORMER_LAYOUT


def published_state(model: torch.nn.Module) -> dict:
    state, unmatched = ENFORMER_LAYOUT.to_published(model.state_dict())
    assert not unmatched, unmatched
    return state


def save_timm(model: torch.nn.Module, path, arch: str = 'enformer_small') -> Path:
    args = argparse.Namespace(model=arch, lr=1e-3, epochs=310, drop_path=0.1, batch_size=128)
    torch.save({'epoch': 309, 'arch': arch, 'state_dict': published_state(model),
                'version': 2, 'args': args, 'metric': 78.9}, path)
    return Path(path)


def save_mm(model: torch.nn.Module, path, classes, kind: str = 'mmdet', palette=None) -> Path:
    meta = {f'{kind}_version': '2.28.2' if kind == 'mmdet' else '0.30.0',
            'mmcv_version': '1.7.1', 'CLASSES': tuple(classes), 'epoch': 12, 'iter': 88000,
            'config': "model = dict(type='MaskRCNN')", 'seed': 0, 'exp_name': 'x.py'}
    if palette is not None:
        meta['PALETTE'] = [list(p) for p in palette]
    optimizer = {'state': {0: {'step': torch.tensor(1.0)}},
                 'param_groups': [{'lr': 1e-4, 'weight_decay': 0.05, 'params': [0]}]}
    torch.save({'meta': meta, 'state_dict': published_state(model), 'optimizer': optimizer},
               path)
    return Path(path)


class _Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, hits=None, **kwargs):
        self.hits = hits
        super().__init__(*args, **kwargs)

    def do_GET(self):
        self.hits[self.path] += 1
        super().do_GET()

    def log_message(self, *args):
        pass


class ReleaseServer:
    """``with ReleaseServer(folder) as srv: srv.url('enformer_small.pth.tar')``."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.hits = collections.Counter()
        handler = functools.partial(_Handler, directory=str(self.folder), hits=self.hits)
        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str = '') -> str:
        return f'http://127.0.0.1:{self.httpd.server_address[1]}/{name}'

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port_url(name: str) -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    return f'http://127.0.0.1:{port}/{name}'
