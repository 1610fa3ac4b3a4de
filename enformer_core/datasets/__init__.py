"""Datasets, data generators and transforms, registered in MMEngine's root registries.

=====================  ==========================================  =================
module                 what                                        needs
=====================  ==========================================  =================
``idx``                IDX (MNIST format) reader / writer           numpy
``images``             image files as the pipelines read them      numpy (mmcv)
``shapes_coco``        generated COCO-format shapes (detection)     numpy, pycocotools
``shapes_ade``         generated ADE20K-layout shapes (segmentation)  numpy, Pillow
``fashion_mnist``      ``FashionMNISTIdx``                          mmengine
``transforms``         ``GreyToRGB``, ``CheckSegLabels``            mmcv
``coco``               ``ValidatedCocoDataset``                     mmdet
``segmentation``       ``ShapesADEDataset``                         mmseg
=====================  ==========================================  =================

The toolbox-dependent modules are imported (and their classes registered) when their toolbox
is installed; otherwise using one of their names raises an ImportError that says what to
install.
"""
import importlib

from .idx import read_idx, read_idx_item, write_idx  # noqa: F401
from .images import (dense_size, list_images, load_image, prepare_image,  # noqa: F401
                     read_image)

_OPTIONAL = {
    'fashion_mnist': ('FashionMNISTIdx', 'FASHION_MNIST_CLASSES'),
    'transforms': ('GreyToRGB', 'CheckSegLabels', 'SegLabelError'),
    'coco': ('ValidatedCocoDataset', 'CocoAnnotationError', 'check_coco_dict'),
    'segmentation': ('ShapesADEDataset',),
}
#: module -> why it could not be imported (a toolbox is missing)
UNAVAILABLE = {}
for _module, _names in _OPTIONAL.items():
    try:
        _mod = importlib.import_module(f'{__name__}.{_module}')
    except ImportError as _exc:
        UNAVAILABLE[_module] = str(_exc)
        continue
    globals().update({n: getattr(_mod, n) for n in _names})


def __getattr__(name):
    for module, names in _OPTIONAL.items():
        if name in names and module in UNAVAILABLE:
            raise ImportError(f'enformer_core.datasets.{name} needs a toolbox that is not '
                              f'installed ({UNAVAILABLE[module]}); pip install '
                              f"'enformer_core[mm]' or run tools/setup_env.sh")
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
