"""The backbones (one file per family) and their plain-PyTorch classifiers."""
from .backbone import ClusterBackbone, ClusterStage
from .classifier import ClusterClassifier, create_model, list_models, register_model
from .clustering import (BaseClustering, ConsensusAggregation, EnsembleClustering,
                         FuzzyClustering, PartitionalClustering, PossibilisticClustering,
                         ProbabilisticClustering, build_clustering)
from .clusterformer import ClusterFormer, RecurrentClusteringMixer
from .context_cluster import ContextCluster, ContextClusterMixer
from .enformer import EnFormer, EnFormerBlock
from .fec import FEC, ClusterPooling
from .layers import CoordinateGrid, LayerNorm2d, ReparamDWConv
from .metaformer import MetaFormerBackbone, MetaFormerBlock

__all__ = ['ClusterBackbone', 'ClusterStage', 'ClusterClassifier', 'create_model',
           'list_models', 'register_model', 'BaseClustering', 'ConsensusAggregation',
           'EnsembleClustering', 'FuzzyClustering', 'PartitionalClustering',
           'PossibilisticClustering', 'ProbabilisticClustering', 'build_clustering',
           'ClusterFormer', 'RecurrentClusteringMixer', 'ContextCluster', 'ContextClusterMixer',
           'EnFormer', 'EnFormerBlock', 'FEC', 'ClusterPooling', 'CoordinateGrid', 'LayerNorm2d',
           'ReparamDWConv', 'MetaFormerBackbone', 'MetaFormerBlock']
