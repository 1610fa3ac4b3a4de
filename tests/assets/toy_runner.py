"""A tiny mmengine Runner set-up used by the foundation tests (resume, torchrun on gloo).

Run under torchrun as ``python -m torch.distributed.run --nproc_per_node 2 toy_runner.py OUT``:
each rank trains a few iterations and writes ``OUT/rank{r}.txt`` with the world size and a
checksum of its parameters (DDP keeps them identical across ranks).
"""
import os
import sys

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.dataset import BaseDataset
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, MODELS
from mmengine.runner import Runner

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


@MODELS.register_module(force=True)
class ToyRegressor(BaseModel):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, inputs, targets=None, mode='tensor', **unused):
        inputs = torch.stack(inputs) if isinstance(inputs, (list, tuple)) else inputs
        out = self.linear(inputs)
        if mode == 'loss':
            targets = torch.stack(targets) if isinstance(targets, (list, tuple)) else targets
            return dict(loss=((out - targets) ** 2).mean())
        return out


@DATASETS.register_module(force=True)
class ToyRegression(BaseDataset):
    def __init__(self, n=64, **kwargs):
        self.n = n
        super().__init__(serialize_data=False, lazy_init=False, **kwargs)

    def load_data_list(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.n, 4, generator=g)
        y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        return [dict(inputs=x[i], targets=y[i]) for i in range(self.n)]


def make_cfg(work_dir, max_epochs=2, launcher='none'):
    return Config(dict(
        model=dict(type='ToyRegressor'),
        work_dir=work_dir,
        train_dataloader=dict(dataset=dict(type='ToyRegression', n=64),
                              sampler=dict(type='DefaultSampler', shuffle=True),
                              batch_size=8, num_workers=0),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05)),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1),
                           logger=dict(type='LoggerHook', interval=4)),
        launcher=launcher,
        env_cfg=dict(dist_cfg=dict(backend='gloo')),
        randomness=dict(seed=0),
        log_level='WARNING',
    ))


if __name__ == '__main__':
    import enformer_core  # noqa: F401  (allow-lists mmengine types for weights-only loading)
    from enformer_core.utils.dist import prepare_distributed
    out = sys.argv[1]
    cfg = make_cfg(os.path.join(out, 'work'), max_epochs=1, launcher='pytorch')
    prepare_distributed(cfg, 'pytorch')
    runner = Runner.from_cfg(cfg)
    runner.train()
    import torch.distributed as dist
    model = runner.model.module if hasattr(runner.model, 'module') else runner.model
    checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
    with open(os.path.join(out, f'rank{dist.get_rank()}.txt'), 'w') as f:
        f.write(f'{dist.get_world_size()} {runner.iter} {checksum:.10f}\n')
