"""Fashion-MNIST read from its IDX files, as the Debian package ``dataset-fashion-mnist`` ships
them (``/usr/share/datasets/fashion-mnist``, gzipped).

mmpretrain's own ``FashionMNIST`` needs the files un-gzipped next to each other, tries to
download when they are missing and, with ``split='test'`` but ``test_mode=False``, silently
loads the *training* files.  Here ``split`` alone decides which files are read.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
from mmengine.dataset import BaseDataset

from ..registry import DATASETS
from .idx import read_idx
from .images import FASHION_MNIST_DIR

FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
                         'Shirt', 'Sneaker', 'Bag', 'Ankle boot')


@DATASETS.register_module()
class FashionMNISTIdx(BaseDataset):
    """Fashion-MNIST from its IDX files; ``split`` ('train' | 'test') picks the files.

    Args:
        data_root: folder holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.
        split: ``'train'`` (60 000 images) or ``'test'`` (10 000 images).
        num_samples: images per epoch. Fewer than the split: a fixed random subset drawn
            with ``seed``. More: the whole split, repeated, plus a fixed random subset for the
            remainder (``70000`` = the 60k training images + 10k of them again), so a run can
            be sized in images rather than whole epochs. ``None`` keeps the split as it is.
        seed: seed of the subset.
    """

    METAINFO = {'classes': FASHION_MNIST_CLASSES}
    FILES = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
             'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}

    def __init__(self, data_root: str = FASHION_MNIST_DIR,
                 split: str = 'train', num_samples: Optional[int] = None, seed: int = 0,
                 **kwargs):
        if split not in self.FILES:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.split = split
        self.num_samples = num_samples
        self.seed = seed
        kwargs.setdefault('test_mode', split == 'test')
        super().__init__(ann_file='', data_root=data_root, **kwargs)

    def _find(self, stem: str) -> str:
        for name in (stem + '.gz', stem):
            path = os.path.join(self.data_root, name)
            if os.path.isfile(path):
                return path
        raise FileNotFoundError(
            f'Fashion-MNIST file {stem}[.gz] not found in {self.data_root!r}. Install the Debian '
            f'package (apt-get install dataset-fashion-mnist, files under '
            f'/usr/share/datasets/fashion-mnist/) or set data_root; see docs/demo.md.')

    def load_data_list(self):
        if not os.path.isdir(self.data_root):
            self._find(self.FILES[self.split][0])  # raises the explanatory error
        img_file, label_file = (self._find(s) for s in self.FILES[self.split])
        imgs = read_idx(img_file)
        labels = read_idx(label_file).astype(np.int64)
        if imgs.ndim != 3 or len(imgs) != len(labels):
            raise ValueError(f'{img_file}: expected (N, H, W) images matching {len(labels)} '
                             f'labels, got {imgs.shape}')
        index = np.arange(len(labels))
        if self.num_samples is not None:
            if self.num_samples < 1:
                raise ValueError(f'num_samples must be a positive number of images, got '
                                 f'{self.num_samples}')
            repeats, rest = divmod(self.num_samples, len(labels))
            subset = np.sort(np.random.default_rng(self.seed).permutation(len(labels))[:rest])
            index = np.concatenate([np.tile(index, repeats), subset])
        return [dict(img=imgs[i], gt_label=int(labels[i])) for i in index]
