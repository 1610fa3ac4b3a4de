"""Convert a published FEC checkpoint to the enformer_core layout.

    python tools/model_converters/fec_to_enformer_core.py fec_small.pth fec_small_ours.pth \
        --check fec_small
    python tools/model_converters/fec_to_enformer_core.py ours.pth published.pth --reverse

Same options as ``coc_to_enformer_core.py`` (FEC shares CoC's layout plus the cluster-pooling
keys ``network.{odd}.{conv_f,conv_v,conv_skip,norm2}``).  Loading is weights-only; unmatched
keys are printed (``--strict`` makes them an error).
"""
import os
import sys

if __name__ == '__main__':
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from coc_to_enformer_core import main
    main(family='FEC', doc=__doc__)
