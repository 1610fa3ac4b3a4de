"""Convert a published EnFormer checkpoint to our (mmpretrain/OpenMMLab) layout.

    python tools/model_converters/enformer_to_mmpretrain.py enformer_s_published.pth enformer_s.pth
    python tools/model_converters/enformer_to_mmpretrain.py det_published.pth det_ours.pth --dense

Classifier checkpoints (un-fused or re-parameterised, S/B/L) become an mmpretrain
``ImageClassifier`` checkpoint (``backbone.*`` + ``head.fc.*``) that also loads with
``enformer_core.create_model('enformer_s', pretrained=DST)`` (re-parameterised ones after
``.reparameterize()``).  ``--dense``: a detector/segmentor checkpoint (or a bare dense
backbone): backbone keys are converted, neck/head keys pass through unchanged;
``--backbone-only`` writes the bare backbone.  Loading is weights-only; unmatched keys are
reported (``--strict`` makes them an error).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..')))

DIRECTION = 'published_to_ours'


def parse_args(argv=None, description=__doc__):
    p = argparse.ArgumentParser(description=description.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=description)
    p.add_argument('src', metavar='SRC', help='input checkpoint')
    p.add_argument('dst', metavar='DST', help='output checkpoint')
    p.add_argument('--dense', action='store_true',
                   help='detector/segmentor or dense backbone: convert backbone keys only, '
                        'pass the others through')
    p.add_argument('--backbone-only', action='store_true',
                   help='write the bare backbone (implies --dense handling, drops the rest)')
    p.add_argument('--strict', action='store_true', help='fail on keys that match no rule')
    p.add_argument('--bare', action='store_true',
                   help='write the state dict alone (no {"state_dict", "meta"} wrapper)')
    return p.parse_args(argv)


def main(argv=None, direction=DIRECTION, description=__doc__):
    args = parse_args(argv, description)
    from enformer_core.analysis import convert_file, format_conversion_report
    report = convert_file(args.src, args.dst, direction, dense=args.dense,
                          backbone_only=args.backbone_only, strict=args.strict, bare=args.bare)
    print(format_conversion_report(report, args.src, args.dst))
    return report


if __name__ == '__main__':
    main()
