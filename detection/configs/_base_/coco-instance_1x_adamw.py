# COCO 2017 instance segmentation, 1x schedule, AdamW: the published Mask R-CNN recipe of every
# backbone here, on mmdet's own _base_ files.  1333x800 + flip 0.5 and bbox/segm CocoMetric
# come from coco_instance; MultiStepLR at epochs 8 and 11 of 12 with a 500-iteration linear
# warm-up from schedule_1x; AdamW lr 2e-4, wd 1e-4 replaces its SGD.
_base_ = [
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['enformer_core'], allow_failed_imports=False)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4))
# mmdet's CocoDataset plus a check that names the file and the problem when the annotation
# file is corrupt or not COCO (enformer_core/datasets/coco.py); identical otherwise.
dataset_type = 'ValidatedCocoDataset'
# 8 GPUs x 2 images = 16
train_dataloader = dict(batch_size=2, num_workers=2, dataset=dict(type=dataset_type))
val_dataloader = dict(dataset=dict(type=dataset_type))
test_dataloader = val_dataloader
auto_scale_lr = dict(enable=False, base_batch_size=16)
