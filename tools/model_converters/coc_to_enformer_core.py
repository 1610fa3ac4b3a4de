"""Convert a published Context Clusters (CoC) checkpoint to the enformer_core layout.

    python tools/model_converters/coc_to_enformer_core.py coc_tiny.pth.tar coc_tiny_ours.pth \
        --check coc_tiny
    python tools/model_converters/coc_to_enformer_core.py ours.pth published.pth --reverse

The result is an mmpretrain ``ImageClassifier`` checkpoint (``backbone.*`` + ``head.fc.*``)
that ``tools/test.py`` / ``mim test`` evaluate with ``classification/configs/coc/*`` and that
``enformer_core.create_model('coc_tiny')`` loads.  Published detector/segmentor checkpoints
(backbone below ``backbone.``) convert their backbone keys and pass neck/head keys through.
Loading is weights-only; unmatched keys are printed (``--strict`` makes them an error).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..')))


def main(argv=None, family='CoC', doc=__doc__):
    p = argparse.ArgumentParser(description=doc.split('\n')[0], epilog=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('src', metavar='SRC', help='input checkpoint')
    p.add_argument('dst', metavar='DST', help='output checkpoint')
    p.add_argument('--reverse', action='store_true',
                   help='ours -> published layout (default: published -> ours)')
    p.add_argument('--backbone-only', action='store_true',
                   help='our side is a bare backbone state dict (no backbone./head.fc. keys)')
    p.add_argument('--check', metavar='MODEL', default=None,
                   help='create_model name (e.g. coc_tiny) to check the result against')
    p.add_argument('--strict', action='store_true',
                   help='exit with an error if any key is unmatched, missing or unexpected')
    args = p.parse_args(argv)
    from enformer_core.models.baseline_converters import convert_file
    direction = 'ours_to_published' if args.reverse else 'published_to_ours'
    report = convert_file(args.src, args.dst, direction, classifier=not args.backbone_only,
                          check_model=args.check, family=family)
    bad = report['unmatched'] + report['missing'] + report['unexpected'] + \
        report.get('mismatched', [])
    if args.strict and bad:
        sys.exit(f'{len(bad)} keys did not convert cleanly (see above)')
    return report


if __name__ == '__main__':
    main()
