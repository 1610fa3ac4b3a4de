# ClusterFormer-Small, recipe as clusterformer-tiny with drop path 0.3 (Swin-S's; open choice).
# Paper top-1 83.41.
_base_ = './clusterformer-tiny_8xb128_in1k.py'
model = dict(backbone=dict(arch='small', drop_path_rate=0.3))
