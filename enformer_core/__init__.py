"""EnFormer (deep ensemble clustering) and the clustering backbones it is compared with.

``import enformer_core`` needs only torch and numpy: it gives the models
(:func:`create_model`, :func:`list_models`), published weights (:mod:`enformer_core.hub`) and
checkpoint loading / conversion (:mod:`enformer_core.checkpoint`).  With MMEngine and the
OpenMMLab toolboxes installed it also registers the backbones, datasets, transforms and hooks
in MMEngine's root registries, so mmpretrain, mmdet and mmseg configs find them through
``custom_imports = dict(imports=['enformer_core'])``.
"""
from . import datasets
from .checkpoint import (CheckpointError, KeyMap, LoadReport, PublishedLayout,
                         allow_checkpoint_globals, load_checkpoint, read_state_dict)
from .hub import PRETRAINED_CFGS, WeightsUnavailableError, get_pretrained_cfg
from .models import (BaseClustering, ClusterBackbone, ClusterClassifier, ClusterFormer,
                     ConsensusAggregation, ContextCluster, EnFormer, EnsembleClustering, FEC,
                     FuzzyClustering, PartitionalClustering, PossibilisticClustering,
                     ProbabilisticClustering, create_model, list_models, register_model)
from .registry import HAS_MMENGINE, registered

if HAS_MMENGINE:
    from . import engine  # noqa: F401  (registers the hooks)

__version__ = '0.1.0'

# mmengine's own --resume reads checkpoints with torch.load's weights-only default
allow_checkpoint_globals()

__all__ = ['datasets', 'CheckpointError', 'KeyMap', 'LoadReport', 'PublishedLayout',
           'load_checkpoint', 'read_state_dict', 'PRETRAINED_CFGS', 'WeightsUnavailableError',
           'get_pretrained_cfg', 'BaseClustering', 'ClusterBackbone', 'ClusterClassifier',
           'ClusterFormer', 'ConsensusAggregation', 'ContextCluster', 'EnFormer',
           'EnsembleClustering', 'FEC', 'FuzzyClustering', 'PartitionalClustering',
           'PossibilisticClustering', 'ProbabilisticClustering', 'create_model', 'list_models',
           'register_model', 'HAS_MMENGINE', 'registered']
