"""Parameters and FLOPs of any config (classification, detection, segmentation) or model name.

    python tools/analysis/get_flops.py enformer_s                      # 224x224
    python tools/analysis/get_flops.py classification/configs/enformer/enformer-s_8xb128_in1k.py
    python tools/analysis/get_flops.py detection/configs/....py --shape 800 1280 --full
    python tools/analysis/get_flops.py enformer_s enformer_b enformer_l --json flops.json

Parameters: the true count, the count after ``reparameterize()`` and the EnFormer paper's
convention (re-parameterised count / 2**20: the published "8.1M" of EnFormer-S is
8,506,224 / 1,048,576).  FLOPs: fvcore-style multiply-adds through
``mmengine.analysis.FlopAnalyzer`` (conv, linear/matmul/bmm/einsum, norms, pooling,
up-sampling); ``--count-extra`` also counts baddbmm, softmax and element-wise ops.
Detection configs are measured on the backbone by default (``--full`` adds the whole
detector); classification and segmentation configs on the whole model.
"""
import argparse
import sys

from enformer_core.utils import write_json


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('models', nargs='+', metavar='CONFIG|MODEL',
                   help='config file(s) of any task or create_model name(s) (e.g. enformer_s)')
    p.add_argument('--shape', type=int, nargs='+', metavar='SIZE',
                   help='input H W (one value for a square); default per task: '
                        'classification 224x224, detection 800x1280, segmentation 512x512')
    p.add_argument('--deploy', action='store_true',
                   help='count the re-parameterised (fused) graph')
    p.add_argument('--target', choices=['auto', 'full', 'backbone'], default='auto',
                   help='what to count (auto: backbone for detection, whole model otherwise)')
    p.add_argument('--full', action='store_true',
                   help='for detection/segmentation: also count the whole model')
    p.add_argument('--count-extra', action='store_true',
                   help='also count baddbmm, softmax, element-wise ops and reductions')
    p.add_argument('--json', metavar='OUT', help='write the results as JSON')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from enformer_core.analysis import complexity, format_complexity, load_model
    shape = None
    if args.shape:
        if len(args.shape) > 2:
            raise SystemExit('--shape takes H [W]')
        shape = (args.shape[0], args.shape[-1])
    results = []
    for spec in args.models:
        lm = load_model(spec, deploy=args.deploy)
        targets = [args.target]
        if args.full and lm.task != 'classification' and args.target != 'full':
            targets = ['backbone', 'full']
        for target in targets:
            try:
                info = complexity(lm, shape, target=target, count_extra=args.count_extra)
            except Exception as e:  # the whole detector may not trace
                if target == 'full' and len(targets) > 1:
                    print(f'[{lm.name}] whole-model count failed ({type(e).__name__}: {e}); '
                          'backbone figures above stand', file=sys.stderr)
                    continue
                raise
            info['deploy'] = args.deploy
            results.append(info)
            print(format_complexity(info))
            print()
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == '__main__':
    main()
