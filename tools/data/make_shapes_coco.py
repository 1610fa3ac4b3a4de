#!/usr/bin/env python
"""Generate the seeded COCO-format shapes dataset used by the detection demo and tests.

    python tools/data/make_shapes_coco.py data/generated/shapes_coco
    python tools/data/make_shapes_coco.py OUT --num-train 200 --num-val 50 --size 128 --seed 0

Writes OUT/{train,val}/*.png, OUT/annotations/instances_{train,val}.json and OUT/preview.png.
"""
import argparse
import time

from enformer_core.datasets.shapes_coco import CLASSES, make_shapes_coco


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('out', help='output folder (e.g. data/generated/shapes_coco)')
    p.add_argument('--num-train', type=int, default=200)
    p.add_argument('--num-val', type=int, default=50)
    p.add_argument('--size', type=int, nargs='+', default=[128],
                   help='image side, or HEIGHT WIDTH (default 128)')
    p.add_argument('--shapes', type=int, nargs=2, default=[1, 3], metavar=('MIN', 'MAX'),
                   help='shapes per image (default 1 3)')
    p.add_argument('--empty-train', type=int, default=0,
                   help='number of background-only training images (default 0)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--no-preview', action='store_true', help='skip preview.png')
    args = p.parse_args(argv)
    if len(args.size) not in (1, 2):
        p.error('--size takes one or two integers')
    size = (args.size[0], args.size[0]) if len(args.size) == 1 else tuple(args.size)
    t0 = time.time()
    try:
        files = make_shapes_coco(args.out, args.num_train, args.num_val, size, args.seed,
                                 tuple(args.shapes), args.empty_train,
                                 preview=not args.no_preview, verbose=True)
    except ValueError as exc:
        p.error(str(exc))
    print(f'[shapes_coco] classes {CLASSES}; annotations: '
          f'{files["train"]}, {files["val"]} ({time.time() - t0:.1f}s)')


if __name__ == '__main__':
    main()
