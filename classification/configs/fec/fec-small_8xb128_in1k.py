# FEC small (fec_small), ImageNet-1K, 8 GPUs x 128 images; recipe as Context Clusters
# (shared/spec/BASELINES.md): AdamW lr 1e-3, wd 0.05, 300 epochs + cool-down, drop path 0.1.
# Converted release weights:
#   python tools/model_converters/fec_to_enformer_core.py fec_small.pth fec-small_in1k.pth
_base_ = '../coc/coc-tiny_8xb128_in1k.py'
model = dict(
    backbone=dict(_delete_=True, type='FEC', arch='small', clustering='classification',
                  drop_path_rate=0.1),
    head=dict(in_channels=320))
# cluster pooling's conv_f only feeds an argmax (no gradient, as published): DDP must
# tolerate unused parameters
find_unused_parameters = True
