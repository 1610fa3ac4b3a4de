"""Cluster-assignment maps of an EnFormer backbone, overlaid on images (PNG grid).

    python tools/visualization/vis_clusters.py enformer_s none demo.jpg --out clusters.png
    python tools/visualization/vis_clusters.py \\
        classification/configs/demo/enformer-s_fashion-mnist-64px.py work_dirs/demo/latest.pth \\
        fashion-mnist:0 fashion-mnist:1 --stages 0 1 2 3 --blocks last --out demo.png
    python tools/visualization/vis_clusters.py detection/configs/<cfg>.py none img.jpg

CONFIG may be a config file of any task (classification, detection, segmentation) or a
``create_model`` name; CKPT a checkpoint (ours, mmpretrain/mmdet/mmseg or the published
layout) or ``none`` for random init (which still shows how the grid partitions the image);
IMAGE a file or ``fashion-mnist:IDX``.  For every chosen stage/block each base clustering
(partitional: hard labels; fuzzy/possibilistic/probabilistic: arg-max, shaded by the
membership) and the consensus is drawn.  Stages 0-1 cluster an agents grid, stages 2-3 all
pixels; maps are upsampled (nearest) to the image.  Eval mode: deterministic.
"""
import argparse
import os



def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', metavar='CONFIG', help='config file or create_model name')
    p.add_argument('checkpoint', metavar='CKPT', help='checkpoint file or "none"')
    p.add_argument('images', nargs='+', metavar='IMAGE', help='image files or fashion-mnist:IDX')
    p.add_argument('--stages', type=int, nargs='+', help='stages to show (default: all)')
    p.add_argument('--blocks', nargs='+', default=['last'],
                   help='block indices per stage (negative from the end), "last" or "all"')
    p.add_argument('--head', type=int, default=0, help='which head to show (default 0)')
    p.add_argument('--size', type=int, nargs='+', metavar='SIZE',
                   help='input H [W]; default: 224 for classification (the demo config\'s size '
                        'if it sets one), the image size capped at 640 for dense tasks')
    p.add_argument('--out', default='clusters.png', help='output PNG')
    p.add_argument('--dpi', type=int, default=110, help='resolution of the PNG')
    p.add_argument('--seed', type=int, default=0,
                   help='seed of the random init (CKPT none), so pictures are reproducible')
    return p.parse_args(argv)


def _config_size(cfg):
    """The test-time crop/resize size of a config, if it states one."""
    try:
        pipeline = cfg.test_dataloader.dataset.pipeline
    except Exception:
        return None
    size = None
    for t in pipeline:
        for key in ('crop_size', 'scale', 'size'):
            v = t.get(key) if isinstance(t, dict) else None
            if isinstance(v, int):
                size = (v, v)
            elif isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int)
                                                                     for i in v):
                size = (v[1], v[0]) if key == 'scale' else tuple(v)
    return size


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    import torch

    from enformer_core.analysis import collect_assignments, load_model
    from enformer_core.checkpoint import CheckpointError
    from enformer_core.datasets import dense_size, load_image, prepare_image
    from enformer_core.visualization import render_assignment_grid
    torch.manual_seed(args.seed)
    try:
        lm = load_model(args.config, checkpoint=args.checkpoint)
    except CheckpointError as exc:
        raise SystemExit(f'error: {exc}') from None
    for note in lm.notes:
        print(note)
    blocks = [int(b) if b.lstrip('-').isdigit() else b for b in args.blocks]
    for b in blocks:
        if isinstance(b, str) and b not in ('last', 'all'):
            raise SystemExit(f'--blocks: expected integers, "last" or "all", got {b!r}')
    shown, records = [], []
    for spec in args.images:
        rgb = load_image(spec)
        if args.size:
            size = (args.size[0], args.size[-1])
        elif lm.task == 'classification':
            size = (_config_size(lm.config) if lm.config is not None else None) or (224, 224)
            size = tuple(max(32, s) for s in size)
        else:
            size = dense_size(*rgb.shape[:2])
        x, img = prepare_image(rgb, size, lm.mean, lm.std, lm.in_channels)
        recs = collect_assignments(lm.backbone, x, args.stages, blocks, args.head)
        shown.append(img)
        records.append(recs)
        for r in recs:
            used = len(np.unique(r.labels_and_confidence(size)[0]))
            print(f'{spec}: stage {r.stage} block {r.block} {r.title:<22} points '
                  f'{r.points_grid[0]}x{r.points_grid[1]}, {used}/{r.num_centres} centres used')
    ckpt = 'random init' if str(args.checkpoint).lower() == 'none' else \
        os.path.basename(args.checkpoint)
    render_assignment_grid(shown, records, args.out,
                           title=f'{lm.name} ({ckpt}), head {args.head}', dpi=args.dpi)
    print(f'wrote {args.out}')
    return records


if __name__ == '__main__':
    main()
