# The 310-epoch recipe without the 10 cool-down epochs (the ClusterFormer paper: 300 epochs).
_base_ = ['./imagenet_bs1024_adamw_310e.py']
train_cfg = dict(max_epochs=300)
