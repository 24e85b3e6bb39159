"""MNIST and Fashion-MNIST from their IDX files, and Nielsen's `mnist.pkl.gz`.

Images come back as float32 rows of 784 values in [0, 1] and labels as int64, on the host;
`backprop.data.Batches` moves them to the backend.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import re
import struct
import zlib

import numpy as np

from backprop.data.idx import parse_idx, read_at_most
from backprop.data.sources import DataError, fetch
from backprop.errors import ConfigError

MNIST_MIRRORS = (  # PyTorch's, then TensorFlow's (https only: sources.fetch refuses anything else)
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
FASHION_MIRRORS = (  # the authors' repository (its README: "the dataset appears under data/fashion"), then Keras's
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
)

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


NIELSEN_MAX_BYTES = 512 << 20  # the decompressed pickle; Nielsen's is 220 MB (440 MB with float64 images)
NIELSEN_MAX_OPCODES = 100_000  # Nielsen's pickle has a few hundred


class _NDArrayName:
    """What `numpy.ndarray` in the pickle stands for: named by `_reconstruct`, never called."""

    def __new__(cls, *args, **kwargs):
        raise pickle.UnpicklingError("refusing to call numpy.ndarray: only pickled arrays are allowed")


class _DType:
    """A pickled `numpy.dtype`: a plain number type (bool, int, uint, float), checked before use."""

    def __new__(cls, code=None, align=False, copy=False):
        if not (isinstance(code, str) and re.fullmatch(r"[iuf][1248]|b1", code)):
            raise pickle.UnpicklingError(f"refusing dtype {code!r}: only plain numbers are allowed")
        self = super().__new__(cls)
        self.dtype = np.dtype(code)
        return self

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) >= 2 and state[1] in ("<", ">", "|", "=")
                and all(field is None for field in state[2:5])):  # fmt: skip
            raise pickle.UnpicklingError(f"refusing dtype state {state!r:.80}: only plain numbers are allowed")
        self.dtype = self.dtype.newbyteorder(state[1]) if state[1] != "|" else self.dtype


class _Array:
    """A pickled array, built only from a state whose data has exactly the size its shape says."""

    array = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) in (4, 5)):
            raise pickle.UnpicklingError("malformed array state")
        shape, dtype, fortran, raw = state[-4:]
        if isinstance(raw, str):
            raw = raw.encode("latin1")  # how Python 2 pickles hold the bytes
        if not (isinstance(dtype, _DType) and isinstance(raw, bytes) and isinstance(shape, tuple)
                and all(isinstance(n, int) and n >= 0 for n in shape)):  # fmt: skip
            raise pickle.UnpicklingError("malformed array state")
        if len(raw) != math.prod(shape) * dtype.dtype.itemsize:
            raise pickle.UnpicklingError(f"an array of shape {shape} comes with {len(raw)} bytes of data")
        self.array = np.frombuffer(raw, dtype.dtype).reshape(shape, order="F" if fortran else "C")


def _reconstruct(cls, shape, dtype):
    """What NumPy pickles an array as: an empty array, then its state (the data)."""
    if cls is not _NDArrayName or shape != (0,):
        raise pickle.UnpicklingError("refusing to reconstruct anything but an empty numpy.ndarray")
    return _Array()


def _encode(text, encoding):
    if not (isinstance(text, str) and encoding in ("latin1", "latin-1")):
        raise pickle.UnpicklingError("refusing _codecs.encode other than latin1")
    return text.encode("latin1")


class _Bounded:
    """The decompressed pickle as the unpickler reads it: at most NIELSEN_MAX_BYTES, read in chunks
    (a length written in the pickle is never allocated before its bytes are there)."""

    def __init__(self, f):
        self.f, self.left = f, NIELSEN_MAX_BYTES

    def _count(self, data: bytes) -> bytes:
        self.left -= len(data)
        if self.left < 0:
            raise pickle.UnpicklingError(f"it holds more than {NIELSEN_MAX_BYTES} bytes, more than MNIST")
        return data

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.left:  # a length in the pickle that goes past the limit
            raise pickle.UnpicklingError(f"it would hold more than {NIELSEN_MAX_BYTES} bytes, more than MNIST")
        return self._count(bytes(read_at_most(self.f, n)))

    def readline(self) -> bytes:
        return self._count(self.f.readline(self.left + 1))


class _Dispatch(dict):
    def __missing__(self, code):
        raise pickle.UnpicklingError(f"refusing pickle opcode {bytes([code])!r}: only arrays in tuples are allowed")


def _counted(load):
    def run(unpickler):
        unpickler.opcodes = getattr(unpickler, "opcodes", 0) + 1
        if unpickler.opcodes > NIELSEN_MAX_OPCODES:
            raise pickle.UnpicklingError(f"more than {NIELSEN_MAX_OPCODES} opcodes, far more than MNIST needs")
        load(unpickler)

    return run


# what a pickle of arrays in tuples needs (protocols 0 to 4): no lists, dicts, sets, objects or buffers
_OPCODES = [getattr(pickle, name)[0] for name in (
    "PROTO FRAME STOP MARK POP POP_MARK NONE NEWTRUE NEWFALSE INT BININT BININT1 BININT2 LONG LONG1 FLOAT "
    "BINFLOAT STRING BINSTRING SHORT_BINSTRING BINBYTES SHORT_BINBYTES BINBYTES8 UNICODE BINUNICODE "
    "SHORT_BINUNICODE BINUNICODE8 EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3 GLOBAL STACK_GLOBAL REDUCE BUILD "
    "PUT BINPUT LONG_BINPUT GET BINGET LONG_BINGET MEMOIZE").split()]  # fmt: skip


class _ArraysOnly(pickle._Unpickler):
    """An unpickler that rebuilds NumPy arrays of numbers in tuples and refuses everything else:
    the pure-Python one (its memo is a dict, and it reads a string's bytes before making room for
    them), restricted to the opcodes such a pickle needs and to NIELSEN_MAX_OPCODES of them."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): _NDArrayName,
        ("numpy", "dtype"): _DType,
        ("_codecs", "encode"): _encode,  # how protocol-2 pickles written by Python 3 store the array bytes
    }
    dispatch = _Dispatch({code: _counted(pickle._Unpickler.dispatch[code]) for code in _OPCODES})

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only NumPy arrays are allowed")
        return self.ALLOWED[module, name]


def _pair(path, part, split: str):
    """(images float32, labels int64) of one split, with Nielsen's structure checked."""
    if not (isinstance(part, tuple) and len(part) == 2 and all(isinstance(a, _Array) for a in part)):
        raise DataError(f"{path}: expected three (images, labels) pairs of arrays")
    (x, y) = (a.array for a in part)
    if x is None or y is None:
        raise DataError(f"{path}: the {split} arrays have no data")
    if x.ndim != 2 or x.shape[1] != 784 or x.dtype.kind != "f":
        raise DataError(f"{path}: {split} images are {x.dtype} of shape {x.shape}, not floats of shape (N, 784)")
    if not np.isfinite(x).all():
        raise DataError(f"{path}: {split} images hold values that are not finite")
    if y.shape != (len(x),) or y.dtype.kind not in "iu":
        raise DataError(f"{path}: {split} labels are {y.dtype} of shape {y.shape}, not {len(x)} integers")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{path}: {split} labels run from {y.min()} to {y.max()}, not within 0 to 9")
    return x.astype(np.float32), y.astype(np.int64)


def nielsen_pickle(path: str | os.PathLike):
    """Nielsen's `mnist.pkl.gz`: ((x, y) train, (x, y) validation, (x, y) test), loaded safely:
    only arrays of numbers in tuples are built, within bounded memory, and the structure is checked
    (images (N, 784) floats, N integer labels from 0 to 9)."""
    try:
        with gzip.open(path, "rb") as f:
            data = _ArraysOnly(_Bounded(f), encoding="latin1").load()
    except (OSError, EOFError, zlib.error, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, struct.error, OverflowError) as error:  # fmt: skip
        raise DataError(f"{path}: cannot load as Nielsen's mnist.pkl.gz: {error}") from error
    if not (isinstance(data, tuple) and len(data) == 3):
        raise DataError(f"{path}: expected three (images, labels) pairs of arrays")
    return tuple(_pair(path, part, split) for part, split in zip(data, ("training", "validation", "test"), strict=True))
