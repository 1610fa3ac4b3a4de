"""Convert one of our (mmpretrain/OpenMMLab) EnFormer checkpoints to the published layout.

    python tools/model_converters/mmpretrain_to_enformer.py work_dirs/enformer_s/epoch_300.pth published.pth
    python tools/model_converters/mmpretrain_to_enformer.py mask_rcnn_ours.pth published_det.pth --dense

The inverse of ``enformer_to_mmpretrain.py`` (same options): ``backbone.*``/``head.fc.*``
become ``stem.*``/``stages.*``/``classifier_pre_norm.*``/``head.*``; dense checkpoints keep
their ``backbone.`` prefix and pass neck/head keys through.  Loading is weights-only.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from enformer_to_mmpretrain import main as _main  # noqa: E402


def main(argv=None):
    return _main(argv, direction='ours_to_published', description=__doc__)


if __name__ == '__main__':
    main()
