# CPU demo: EnFormer-S Mask R-CNN trained from scratch on the generated shapes dataset.
#   python tools/data/make_shapes_coco.py data/generated/shapes_coco
#   python tools/train.py detection/configs/demo/mask-rcnn_enformer-s_fpn_shapes-demo.py
# Same architecture as the COCO config (EnFormer-S detection variant + FPN + Mask R-CNN
# heads); data, class count, head widths (256 -> 64 channels, 1024 -> 256 FC), proposal/sample
# counts and schedule are scaled so that it trains on a CPU in minutes.
_base_ = ['../enformer/mask-rcnn_enformer-s_fpn_1x_coco.py']

data_root = 'data/generated/shapes_coco/'
metainfo = dict(classes=('rectangle', 'ellipse', 'triangle'),
                palette=[(220, 20, 60), (0, 130, 230), (60, 180, 75)])
img_scale = (128, 128)
ch = 64  # FPN / head width (256 on COCO)

model = dict(
    # from scratch (no ImageNet weights); clamp_agents: the 32x32 / 16x16 maps of a 128 px
    # image cluster their pixels instead of being pooled up to 40x40 agents (same
    # parameters; no effect at the COCO sizes, where every map is larger than 40x40)
    backbone=dict(drop_path_rate=0.0, init_cfg=None, clamp_agents=True),
    neck=dict(out_channels=ch),
    # objects are 15-60 px in 128 px images: anchors of 16-256 px (32-512 on COCO)
    rpn_head=dict(in_channels=ch, feat_channels=ch,
                  anchor_generator=dict(scales=[4])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=ch),
        bbox_head=dict(in_channels=ch, fc_out_channels=256, num_classes=3),
        mask_roi_extractor=dict(out_channels=ch),
        mask_head=dict(in_channels=ch, conv_out_channels=ch, num_classes=3)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=200),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(
        rpn=dict(nms_pre=300, max_per_img=100),
        rcnn=dict(max_per_img=20)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/instances_train.json', data_prefix=dict(img='train/'),
                 filter_cfg=dict(filter_empty_gt=True, min_size=32), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/instances_val.json', data_prefix=dict(img='val/'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json',
                     metric=['bbox', 'segm'])
test_evaluator = val_evaluator

max_epochs = 20  # 200 images / batch 4 = 50 iterations per epoch -> 1000 iterations
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[16, 19], gamma=0.1)
]
optim_wrapper = dict(optimizer=dict(lr=1e-3), clip_grad=dict(max_norm=10.0))
auto_scale_lr = dict(enable=False, base_batch_size=4)

default_hooks = dict(logger=dict(interval=10),
                     checkpoint=dict(interval=max_epochs, max_keep_ckpts=1),
                     # ground truth | prediction pictures of every 10th val/test image in
                     # WORK_DIR/<timestamp>/vis_data/vis_image/
                     visualization=dict(type='DetVisualizationHook', draw=True, interval=10))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
