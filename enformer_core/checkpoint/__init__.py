"""Checkpoints: one file reader, one loader, one report, one key-renaming engine.

* :func:`read_state_dict` reads a path or URL with ``torch.load(weights_only=True)`` and returns
  the flat state dict of any wrapper we meet (a bare state dict, mmengine/mmcv checkpoints
  ``{'state_dict', 'meta', ...}``, timm ``.pth.tar`` files, ``{'model': ...}``), with an error
  that says what is wrong: missing, empty, truncated, not a state dict, code in the pickle, or
  tensors holding NaN/Inf.
* :func:`load_checkpoint` loads it into a model: converts an official layout (each backbone
  family declares its :class:`PublishedLayout`), strips or adds ``backbone.``, adapts
  per-centre parameters to another number of centres, and returns a :class:`LoadReport`
  (adapted / missing / unexpected / mismatched keys).  ``strict`` turns a report that does not
  fit into a :class:`CheckpointError` carrying the same text.
* :class:`KeyMap` renames keys in both directions from one table of template pairs, which is
  how the model files write their published layouts (:class:`PublishedLayout`).

``files`` reads, ``loading`` loads and reports, ``layout`` renames; ``convert`` is the converter
scripts' command line (imported on use: it builds models).

Every path that reads weights goes through here: :func:`~enformer_core.create_model`,
``init_cfg=dict(type='Pretrained')``, ``tools/train.py`` / ``tools/test.py``, the analysis and
visualisation tools and the converters (``docs/checkpoints.md``).
"""
from .files import (CheckpointError, allow_checkpoint_globals, check_finite, read_state_dict,
                    torch_load, unwrap_state_dict)
from .layout import KeyMap, PublishedLayout
from .loading import PER_CENTRE, LoadReport, adapt_per_centre, load_checkpoint

__all__ = ['CheckpointError', 'allow_checkpoint_globals', 'check_finite', 'read_state_dict',
           'torch_load', 'unwrap_state_dict', 'KeyMap', 'PublishedLayout', 'PER_CENTRE',
           'LoadReport', 'adapt_per_centre', 'load_checkpoint']
