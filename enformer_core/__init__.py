"""EnFormer (deep ensemble clustering) and clustering baseline backbones.

``import enformer_core`` registers every backbone into the MMEngine registries of the
installed OpenMMLab toolboxes (mmpretrain, mmdet, mmseg) and allow-lists the types mmengine
checkpoints need for weights-only loading.
"""
from .models import (BaseClustering, CheckpointError, ClusterClassifier, ConsensusAggregation,
                     EnFormer, EnsembleClustering, FuzzyClustering, PartitionalClustering,
                     PossibilisticClustering, ProbabilisticClustering, convert_checkpoint,
                     create_model, list_models, load_pretrained, register_model)
from .registry import REGISTERED, register_all
from .utils.safe_load import allow_mmengine_globals
from .utils.inspect import count_params, record_assignments

__version__ = '0.1.0'

allow_mmengine_globals()
register_all()
