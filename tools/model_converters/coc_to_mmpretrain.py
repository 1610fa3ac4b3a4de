"""Convert an official Context Clusters (CoC) checkpoint to the mmpretrain/OpenMMLab layout of
enformer_core, or back with ``--reverse``.

    python tools/model_converters/coc_to_mmpretrain.py coc_tiny.pth.tar \
        checkpoints/coc-tiny_in1k.pth --check coc_tiny

Options (shared by every converter): --reverse, --backbone-only, --check MODEL, --strict.
"""
from enformer_core.checkpoint.convert import main

if __name__ == '__main__':
    main('coc', description=__doc__)
