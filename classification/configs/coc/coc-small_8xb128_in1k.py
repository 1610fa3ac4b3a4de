# Context Clusters small (coc_small), published recipe as coc-tiny. Published top-1: 78.1.
_base_ = './coc-tiny_8xb128_in1k.py'
model = dict(backbone=dict(arch='small'), head=dict(in_channels=512))
