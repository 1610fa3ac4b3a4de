# Context Clusters tiny_plain: global clustering (no regions), 4,4,2,2 centres per side.
# Published top-1: 73.8.
_base_ = './coc-tiny_8xb128_in1k.py'
model = dict(backbone=dict(arch='tiny_plain'))
