# EnFormer-S + Mask R-CNN (FPN), 1x schedule on COCO 2017, published recipe
# (shared/spec/ARCHITECTURE.md sections 8-10). Built on mmdet's own _base_ files.
# Expected (published): box mAP 41.3, mask mAP 38.1.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['enformer_core'], allow_failed_imports=False)

# ImageNet-1k EnFormer-S weights (mmpretrain layout, keys 'backbone.*'); see detection/README.md
checkpoint_file = 'checkpoints/enformer-s_in1k.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='EnFormer',
        arch='s',
        clustering='detection',          # 40x40 agents in stages 0-1, 12^2/10^2 centres
        out_indices=(0, 1, 2, 3),
        gap_before_final_norm=False,     # LayerNorm on each of the 4 feature maps
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file, prefix='backbone.')),
    neck=dict(in_channels=[40, 80, 160, 320], out_channels=256, num_outs=5))

# AdamW lr 2e-4, wd 1e-4; MultiStepLR at epochs 8 and 11 of 12 and 500-iteration linear
# warm-up come from schedule_1x; 1333x800 + flip 0.5 and bbox/segm CocoMetric from coco_instance.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4))

# mmdet's CocoDataset plus a check that names the file and the problem when the annotation
# file is corrupt or not COCO (enformer_core/mm_extensions/det.py); identical otherwise.
dataset_type = 'ValidatedCocoDataset'
# 8 GPUs x 2 images = 16
train_dataloader = dict(batch_size=2, num_workers=2, dataset=dict(type=dataset_type))
val_dataloader = dict(dataset=dict(type=dataset_type))
test_dataloader = val_dataloader
auto_scale_lr = dict(enable=False, base_batch_size=16)
