"""The clustering baselines EnFormer is measured against (``shared/spec/BASELINES.md``).

``BACKBONES`` is what :mod:`enformer_core.registry` registers into mmpretrain, mmdet and mmseg
(``backbone=dict(type='ContextCluster' | 'FEC' | 'ClusterFormer', ...)``); the functions below
are the plain-PyTorch classifiers of :func:`enformer_core.create_model` (mmpretrain
``ImageClassifier`` state-dict layout: ``backbone.*`` + ``head.fc.*``).
"""
from __future__ import annotations

from .clusterformer import ClusterFormer, RecurrentClusteringMixer
from .context_cluster import ContextCluster, ContextClusterMixer
from .factory import ClusterClassifier, register_model
from .fec import FEC, ClusterPooling
from .metaformer import MetaFormerBackbone, MetaFormerBlock

BACKBONES = [ContextCluster, FEC, ClusterFormer]

__all__ = ['BACKBONES', 'ContextCluster', 'ContextClusterMixer', 'FEC', 'ClusterPooling',
           'ClusterFormer', 'RecurrentClusteringMixer', 'MetaFormerBackbone', 'MetaFormerBlock']


def _classifier(cls, arch: str, num_classes: int = 1000, **kwargs) -> ClusterClassifier:
    kwargs.setdefault('drop_path_rate', 0.0)
    backbone = cls(arch=arch, out_indices=(3,), pooled_output=True, **kwargs)
    return ClusterClassifier(backbone, backbone.embed_dims[-1], num_classes)


@register_model
def coc_tiny(**kwargs) -> ClusterClassifier:
    return _classifier(ContextCluster, 'tiny', **kwargs)


@register_model
def coc_tiny_plain(**kwargs) -> ClusterClassifier:
    return _classifier(ContextCluster, 'tiny_plain', **kwargs)


@register_model
def coc_small(**kwargs) -> ClusterClassifier:
    return _classifier(ContextCluster, 'small', **kwargs)


@register_model
def coc_medium(**kwargs) -> ClusterClassifier:
    return _classifier(ContextCluster, 'medium', **kwargs)


@register_model
def fec_small(**kwargs) -> ClusterClassifier:
    return _classifier(FEC, 'small', **kwargs)


@register_model
def fec_base(**kwargs) -> ClusterClassifier:
    return _classifier(FEC, 'base', **kwargs)


@register_model
def fec_large(**kwargs) -> ClusterClassifier:
    return _classifier(FEC, 'large', **kwargs)


@register_model
def clusterformer_tiny(**kwargs) -> ClusterClassifier:
    return _classifier(ClusterFormer, 'tiny', **kwargs)


@register_model
def clusterformer_small(**kwargs) -> ClusterClassifier:
    return _classifier(ClusterFormer, 'small', **kwargs)
