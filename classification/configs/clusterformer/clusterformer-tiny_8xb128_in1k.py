# ClusterFormer-Tiny (implemented from the paper, docs/baselines.md), ImageNet-1K, 8 GPUs x 128.
# Paper recipe: AdamW lr 1e-3, cosine, 300 epochs, batch 1024, cross-entropy (paper top-1 81.31).
# Open choices (documented in docs/baselines.md): 5 warm-up epochs, wd 0.05, drop path 0.2
# (Swin-T's), the timm augmentation of the data base, soft-target cross-entropy for Mixup/CutMix.
_base_ = [
    '../_base_/models/clusterformer-tiny.py',
    '../_base_/datasets/imagenet_bs128.py',
    '../_base_/schedules/imagenet_bs1024_adamw_300e.py',
    '../_base_/default_runtime.py',
]
