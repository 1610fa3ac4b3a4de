"""Ground truth | prediction pictures of a detector on its val (or test) split, as one PNG grid.

    python tools/visualization/vis_det_predictions.py \\
        detection/configs/demo/mask-rcnn_enformer-s_fpn_shapes-demo.py \\
        work_dirs/mask-rcnn_enformer-s_fpn_shapes-demo/epoch_20.pth --num 6 --out det.png

Each row holds two panels of one image: left the annotated instances, right the predicted
boxes and masks with a score of at least ``--score-thr`` (mmdet's ``DetLocalVisualizer``,
class names and palette from the config).  CKPT ``none`` draws a randomly initialised model,
which predicts next to nothing: that is the picture to compare a trained one with.
"""
import argparse
import os
import sys



def parse_args(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', metavar='CONFIG', help='mmdet config file')
    p.add_argument('checkpoint', metavar='CKPT', help='checkpoint file or "none"')
    p.add_argument('--split', choices=['val', 'test'], default='val')
    p.add_argument('--indices', type=int, nargs='+', help='dataset indices (default: spread)')
    p.add_argument('--num', type=int, default=4, help='images when --indices is not given')
    p.add_argument('--cols', type=int, default=2, help='image pairs per row of the grid')
    p.add_argument('--score-thr', type=float, default=0.3)
    p.add_argument('--scale', type=float, default=2.0,
                   help='upscale small images before drawing (labels stay readable)')
    p.add_argument('--out', default='det_predictions.png', help='output PNG')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                   help='override config settings, as in tools/test.py')
    return p.parse_args(argv)


def _grid(panels, cols, pad=4):
    """Tile equally sized HxWx3 uint8 panels, ``cols`` per row, white gutters."""
    import numpy as np
    h, w = panels[0].shape[:2]
    rows = (len(panels) + cols - 1) // cols
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, p in enumerate(panels):
        r, c = divmod(i, cols)
        out[pad + r * (h + pad):pad + r * (h + pad) + h,
            pad + c * (w + pad):pad + c * (w + pad) + w] = p
    return out


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    import torch
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import init_default_scope
    from PIL import Image

    from enformer_core.checkpoint import CheckpointError, load_checkpoint
    from enformer_core.datasets import read_image
    from enformer_core.hub import is_url

    if not os.path.isfile(args.config):
        sys.exit(f'error: config {args.config!r} not found')
    if args.checkpoint != 'none' and not is_url(args.checkpoint) and \
            not os.path.isfile(args.checkpoint):
        sys.exit(f'error: checkpoint {args.checkpoint!r} not found')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    from mmdet.registry import DATASETS, MODELS, VISUALIZERS

    loader_cfg = cfg.get(f'{args.split}_dataloader')
    if not loader_cfg:
        sys.exit(f'error: the config has no {args.split}_dataloader')
    dataset = DATASETS.build(loader_cfg.dataset)
    n = len(dataset)
    if args.indices:
        bad = [i for i in args.indices if not 0 <= i < n]
        if bad:
            sys.exit(f'error: indices {bad} outside the {args.split} split (0..{n - 1})')
        indices = args.indices
    else:
        indices = np.linspace(0, n - 1, min(args.num, n)).round().astype(int).tolist()

    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    if args.checkpoint != 'none':
        try:
            load_checkpoint(model, args.checkpoint, adapt=False)
        except CheckpointError as exc:
            sys.exit(f'error: {exc}')
    model.eval()

    vis = VISUALIZERS.build(dict(type='DetLocalVisualizer', name='vis_det_predictions',
                                 line_width=1))
    vis.dataset_meta = dataset.metainfo
    panels = []
    for k, idx in enumerate(indices):
        item = dataset[idx]
        with torch.no_grad():
            sample = model.test_step(pseudo_collate([item]))[0]
        # predictions come back in the original image frame; the ground truth too when the
        # pipeline loads annotations after Resize (mmdet's test pipelines), otherwise it is
        # in the resized frame and is brought back here
        meta = sample.metainfo
        ori_h, ori_w = meta['ori_shape']
        img = read_image(meta['img_path'])
        gt = sample.gt_instances
        boxes = gt.bboxes.tensor if hasattr(gt.bboxes, 'tensor') else gt.bboxes
        if 'masks' in gt and (gt.masks.height, gt.masks.width) != (ori_h, ori_w):
            sx, sy = meta['scale_factor']
            boxes = boxes / boxes.new_tensor([sx, sy, sx, sy])
            gt.masks = gt.masks.resize((ori_h, ori_w))
        pred = sample.pred_instances
        pred = pred[pred.scores >= args.score_thr]
        s = args.scale
        h, w = round(ori_h * s), round(ori_w * s)
        big = np.asarray(Image.fromarray(img).resize((w, h), Image.NEAREST))
        gt.bboxes = boxes * s
        if 'masks' in gt:
            gt.masks = gt.masks.resize((h, w))
        pred.bboxes = pred.bboxes * s
        if 'masks' in pred:  # (empty ones too: the visualizer checks their size)
            pred.masks = (torch.nn.functional.interpolate(pred.masks[None].float(), size=(h, w))[0]
                          > 0.5) if len(pred) else pred.masks.new_zeros((0, h, w))
        sample.gt_instances, sample.pred_instances = gt, pred
        vis.add_datasample(f'img{idx}', big, data_sample=sample, draw_gt=True, draw_pred=True,
                           show=False, pred_score_thr=args.score_thr)
        panels.append(vis.get_image())
        print(f'[{k + 1}/{len(indices)}] {args.split} image {idx}: {len(sample.gt_instances)} '
              f'annotated, {len(pred)} predicted with score >= {args.score_thr}', flush=True)
    grid = _grid(panels, max(1, args.cols))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    Image.fromarray(grid).save(args.out)
    print(f'wrote {args.out} ({grid.shape[1]}x{grid.shape[0]})')
    return args.out


if __name__ == '__main__':
    main()
