# EnFormer-S + Semantic FPN, 80k iterations on ADE20K (150 classes), published recipe
# (docs/architecture.md, "Training recipes").  Published: mIoU 43.3 (single scale).
# Backbone 8.23 M params, whole model 12.3 M.
_base_ = [
    '../_base_/models/fpn_enformer-s.py',
    '../_base_/ade20k_80k_adamw.py',
]
