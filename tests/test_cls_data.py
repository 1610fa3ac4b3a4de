"""FashionMNISTIdx reads the split it is asked for; GreyToRGB; IDX round trip and errors."""
import numpy as np
import pytest

import enformer_core  # noqa: F401  (registers the extras)
from enformer_core.datasets import FashionMNISTIdx, GreyToRGB, read_idx, write_idx


@pytest.fixture()
def fmnist_dir(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (('train', 12), ('t10k', 5)):
        write_idx(str(tmp_path / f'{split}-images-idx3-ubyte.gz'),
                  rng.integers(0, 256, (n, 28, 28)))
        write_idx(str(tmp_path / f'{split}-labels-idx1-ubyte.gz'), np.arange(n) % 10)
    return tmp_path


def test_idx_round_trip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(str(tmp_path / 'a.gz'), arr)
    np.testing.assert_array_equal(read_idx(str(tmp_path / 'a.gz')), arr)
    (tmp_path / 'bad').write_bytes(b'\x01\x02\x03\x04rest')
    with pytest.raises(ValueError, match='not an IDX file'):
        read_idx(str(tmp_path / 'bad'))


def test_split_test_reads_the_test_files(fmnist_dir):
    """Unlike mmpretrain's FashionMNIST, split='test' alone selects the t10k files."""
    train = FashionMNISTIdx(data_root=str(fmnist_dir), split='train')
    test = FashionMNISTIdx(data_root=str(fmnist_dir), split='test')
    assert len(train) == 12 and len(test) == 5
    assert test.test_mode and not train.test_mode
    sub = FashionMNISTIdx(data_root=str(fmnist_dir), split='train', num_samples=4, seed=1)
    assert len(sub) == 4
    again = FashionMNISTIdx(data_root=str(fmnist_dir), split='train', num_samples=4, seed=1)
    labels = [sub.get_data_info(i)['gt_label'] for i in range(4)]
    assert labels == [again.get_data_info(i)['gt_label'] for i in range(4)]  # fixed subset
    assert labels != [0, 1, 2, 3]  # a random subset, not the first four
    assert FashionMNISTIdx.METAINFO['classes'][0] == 'T-shirt/top'


def test_num_samples_beyond_the_split_repeats_it(fmnist_dir):
    """num_samples sizes an epoch in images: 30 = the 12 training images twice + 6 of them."""
    more = FashionMNISTIdx(data_root=str(fmnist_dir), split='train', num_samples=30, seed=1)
    assert len(more) == 30
    imgs = [more.get_data_info(i)['img'].tobytes() for i in range(30)]
    counts = sorted(imgs.count(b) for b in set(imgs))
    assert len(set(imgs)) == 12 and counts == [2] * 6 + [3] * 6
    with pytest.raises(ValueError, match='num_samples must be a positive'):
        FashionMNISTIdx(data_root=str(fmnist_dir), split='train', num_samples=0)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'train-images-idx3-ubyte.*dataset-fashion-mnist'):
        FashionMNISTIdx(data_root=str(tmp_path / 'nowhere'), split='train')


def test_grey_to_rgb():
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = GreyToRGB()(dict(img=img))
    assert out['img'].shape == (3, 4, 3) and out['img_shape'] == (3, 4)
    for c in range(3):
        np.testing.assert_array_equal(out['img'][..., c], img)
