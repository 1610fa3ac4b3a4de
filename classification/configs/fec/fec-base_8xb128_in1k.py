# FEC base (fec_base), recipe as fec-small.
_base_ = './fec-small_8xb128_in1k.py'
model = dict(backbone=dict(arch='base'), head=dict(in_channels=512))
