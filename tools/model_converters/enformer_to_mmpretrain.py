"""Convert an official EnFormer checkpoint (ImageNet ``.pth.tar``, Mask R-CNN or Semantic FPN)
to the mmpretrain/OpenMMLab layout of enformer_core, or back with ``--reverse``.

    python tools/model_converters/enformer_to_mmpretrain.py enformer_small.pth.tar \
        checkpoints/enformer-s_in1k.pth --check enformer_s
    python tools/model_converters/enformer_to_mmpretrain.py work_dirs/x/epoch_300.pth \
        published.pth.tar --reverse

Options (shared by every converter): --reverse, --backbone-only, --check MODEL, --strict.
"""
from enformer_core.checkpoint.convert import main

if __name__ == '__main__':
    main('enformer', description=__doc__)
