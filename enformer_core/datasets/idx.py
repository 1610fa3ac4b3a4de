"""LeCun's IDX format (MNIST, Fashion-MNIST): the one reader and writer of the package."""
from __future__ import annotations

import gzip
import numpy as np

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4',
               0x0E: '>f8'}


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain) into a numpy array (LeCun's MNIST format)."""
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f'{path} is not an IDX file (bad magic number {data[:4]!r})')
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim)]
    arr = np.frombuffer(data, dtype=_IDX_DTYPES[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f'{path}: header says {dims} but holds {arr.size} values')
    return arr.reshape(dims)


def read_idx_item(path: str, index: int) -> np.ndarray:
    """Item ``index`` of an IDX file (one image of an image file)."""
    items = read_idx(path)
    if not 0 <= index < len(items):
        raise IndexError(f'index {index} out of range: {path} holds {len(items)} items')
    return items[index]


def write_idx(path: str, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (used by tests to make tiny slices)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b''.join(
        int(d).to_bytes(4, 'big') for d in array.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + array.tobytes())
