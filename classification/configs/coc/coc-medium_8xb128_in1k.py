# Context Clusters medium (coc_medium), published recipe as coc-tiny. Published top-1: 81.2.
_base_ = './coc-tiny_8xb128_in1k.py'
model = dict(backbone=dict(arch='medium'), head=dict(in_channels=512))
