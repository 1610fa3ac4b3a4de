# EnFormer-L on ImageNet-1K (mmpretrain ImageClassifier): EnFormer-B's classifier (same
# widths, so the same 512-d head) with the L backbone and drop path 0.3 (our choice, see
# enformer-b.py).
_base_ = ['./enformer-b.py']
model = dict(backbone=dict(arch='l', drop_path_rate=0.3))
