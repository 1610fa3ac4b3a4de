# Context Clusters tiny (coc_tiny), ImageNet-1K, 8 GPUs x 128 images, published recipe
# (docs/baselines.md): AdamW lr 1e-3 (batch 1024), wd 0.05, 300 epochs + 10 cool-down,
# drop path 0.1, RandAugment/Mixup/CutMix/label smoothing 0.1/random erasing (timm recipe).
# Published top-1 (re-trained release): 73.2.  Converted release weights:
#   python tools/model_converters/coc_to_mmpretrain.py coc_tiny.pth.tar coc-tiny_in1k.pth
_base_ = [
    '../_base_/models/coc-tiny.py',
    '../_base_/datasets/imagenet_bs128.py',
    '../_base_/schedules/imagenet_bs1024_adamw_310e.py',
    '../_base_/default_runtime.py',
]
