# FEC small (fec_small), ImageNet-1K, 8 GPUs x 128 images; recipe as Context Clusters
# (docs/baselines.md): AdamW lr 1e-3, wd 0.05, 300 epochs + cool-down, drop path 0.1.
# Converted release weights:
#   python tools/model_converters/fec_to_mmpretrain.py fec_small.pth fec-small_in1k.pth
_base_ = [
    '../_base_/models/fec-small.py',
    '../_base_/datasets/imagenet_bs128.py',
    '../_base_/schedules/imagenet_bs1024_adamw_310e.py',
    '../_base_/default_runtime.py',
]
