"""Convert an official FEC checkpoint to the mmpretrain/OpenMMLab layout of enformer_core, or
back with ``--reverse`` (CoC's layout plus the cluster-pooling reducers).

    python tools/model_converters/fec_to_mmpretrain.py fec_small.pth \
        checkpoints/fec-small_in1k.pth --check fec_small

Options (shared by every converter): --reverse, --backbone-only, --check MODEL, --strict.
"""
from enformer_core.checkpoint.convert import main

if __name__ == '__main__':
    main('fec', description=__doc__)
