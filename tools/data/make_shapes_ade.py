#!/usr/bin/env python
"""Generate the seeded ADE20K-layout textured-shapes dataset used by the segmentation demo/tests.

    python tools/data/make_shapes_ade.py data/generated/shapes_ade
    python tools/data/make_shapes_ade.py OUT --num-train 200 --num-val 40 --classes 6 --seed 0

Writes OUT/images/{training,validation}/*.jpg, OUT/annotations/{training,validation}/*.png
(0 = background, ignored with reduce_zero_label; 1..K = classes), OUT/meta.json, OUT/preview.png.
"""
import argparse
import time

from enformer_core.datasets.shapes_ade import MAX_CLASSES, make_shapes_ade


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('out', help='output folder (e.g. data/generated/shapes_ade)')
    p.add_argument('--num-train', type=int, default=200)
    p.add_argument('--num-val', type=int, default=40)
    p.add_argument('--classes', type=int, default=6,
                   help=f'number of texture classes, 1..{MAX_CLASSES} (default 6)')
    p.add_argument('--size-range', type=int, nargs=2, default=[112, 176], metavar=('MIN', 'MAX'),
                   help='each image side is drawn from [MIN, MAX] (default 112 176)')
    p.add_argument('--max-shapes', type=int, default=4, help='shapes per image, 1..N (default 4)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--no-preview', action='store_true', help='skip preview.png')
    args = p.parse_args(argv)
    t0 = time.time()
    try:
        meta = make_shapes_ade(args.out, args.num_train, args.num_val, args.classes, args.seed,
                               tuple(args.size_range), args.max_shapes,
                               preview=not args.no_preview, verbose=True)
    except ValueError as exc:
        p.error(str(exc))
    print(f'[shapes_ade] {meta["counts"]} images, classes {meta["classes"]} -> {args.out} '
          f'({time.time() - t0:.1f}s)')


if __name__ == '__main__':
    main()
