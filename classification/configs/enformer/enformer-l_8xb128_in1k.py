# EnFormer-L, ImageNet-1K, 8 GPUs x 128 images, 310 epochs (published recipe).
_base_ = [
    '../_base_/models/enformer-l.py',
    '../_base_/datasets/imagenet_bs128.py',
    '../_base_/schedules/imagenet_bs1024_adamw_310e.py',
    '../_base_/default_runtime.py',
]
