from .checkpoint import (CheckpointError, convert_checkpoint, load_pretrained,
                         load_state_dict_file)
from .clustering import (BaseClustering, ConsensusAggregation, EnsembleClustering,
                         FuzzyClustering, PartitionalClustering, PossibilisticClustering,
                         ProbabilisticClustering, build_clustering)
from .enformer import EnFormer, EnFormerBlock, enformer_b, enformer_l, enformer_s
from .factory import ClusterClassifier, create_model, list_models, register_model
from .layers import CoordinateGrid, LayerNorm2d, ReparamDWConv
from . import baselines  # noqa: F401  (registers CoC, FEC, ClusterFormer)
