"""Datasets (host NumPy arrays) and the batch iterator that moves them to the backend."""

from backprop.data.batches import Batches
from backprop.data.idx import IDXError, read_idx
from backprop.data.mnist import CHECKSUMS as mnist_checksums
from backprop.data.mnist import fashion_mnist, mnist, nielsen_pickle
from backprop.data.small import digits, patches, spirals
from backprop.data.sources import DataError

DATASETS = {"digits": digits, "mnist": mnist, "fashion-mnist": fashion_mnist}

__all__ = [
    "Batches",
    "DATASETS",
    "DataError",
    "IDXError",
    "digits",
    "fashion_mnist",
    "mnist",
    "mnist_checksums",
    "nielsen_pickle",
    "patches",
    "read_idx",
    "spirals",
]
