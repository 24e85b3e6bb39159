"""MNIST and Fashion-MNIST from their IDX files, and Nielsen's `mnist.pkl.gz`.

Images come back as float32 rows of 784 values in [0, 1] and labels as int64, on the host;
`backprop.data.Batches` moves them to the backend.
"""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np

from backprop.data.idx import parse_idx
from backprop.data.sources import DataError, fetch
from backprop.errors import ConfigError

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)

# MD5 of each file's decompressed contents (identical for upstream and re-compressed copies)
CHECKSUMS = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}


def _read(dataset: str, filename: str, mirrors, data_dir, download: bool) -> np.ndarray:
    path, content = fetch(dataset, filename, CHECKSUMS[dataset][filename], mirrors, data_dir, download)
    return parse_idx(content, str(path))


def _load(dataset: str, split: str, mirrors, data_dir, download: bool):
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    images, labels = (_read(dataset, f"{prefix}-{kind}", mirrors, data_dir, download) for kind in
                      ("images-idx3-ubyte.gz", "labels-idx1-ubyte.gz"))  # fmt: skip
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(f"{dataset} {split}: {images.shape} images do not match {labels.shape} labels")
    x = images.reshape(images.shape[0], -1).astype(np.float32) / 255.0
    return x, labels.astype(np.int64)


def mnist(split: str = "train", data_dir=None, download: bool = True):
    """(images (N, 784) float32 in [0, 1], labels (N,) int64) of MNIST's train or test split."""
    return _load("mnist", split, MNIST_MIRRORS, data_dir, download)


def fashion_mnist(split: str = "train", data_dir=None, download: bool = True):
    """(images, labels) of Fashion-MNIST, shaped like `mnist`."""
    return _load("fashion-mnist", split, FASHION_MIRRORS, data_dir, download)


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that rebuilds NumPy arrays and tuples and refuses everything else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store the array bytes
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only NumPy arrays are allowed")
        return super().find_class(module.replace("numpy.core", "numpy._core"), name)


def nielsen_pickle(path: str | os.PathLike):
    """Nielsen's `mnist.pkl.gz`: ((x, y) train, (x, y) validation, (x, y) test), loaded safely."""
    try:
        with gzip.open(path, "rb") as f:
            data = _ArraysOnly(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError) as error:
        raise DataError(f"{path}: cannot load as Nielsen's mnist.pkl.gz: {error}") from error
    if not (isinstance(data, tuple) and len(data) == 3 and all(len(part) == 2 for part in data)):
        raise DataError(f"{path}: expected three (images, labels) pairs")
    return tuple((np.asarray(x, np.float32), np.asarray(y, np.int64)) for x, y in data)
