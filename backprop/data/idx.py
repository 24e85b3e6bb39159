"""The IDX format of MNIST: a big-endian header (0, 0, type code, number of dimensions), one
uint32 per dimension, then the values row-major. Raw or gzip-compressed.

>>> import gzip, io, tempfile, os
>>> from backprop.data.idx import read_idx
>>> path = os.path.join(tempfile.mkdtemp(), "tiny-idx1-ubyte.gz")
>>> with gzip.open(path, "wb") as f:
...     _ = f.write(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
>>> read_idx(path).tolist()
[7, 8, 9]
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from backprop.errors import UserError

# IDX type code -> big-endian NumPy dtype
_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IDXError(UserError, ValueError):
    """A file that is not a valid IDX file (the message names it)."""


def read_content(path: str) -> bytes:
    """A file's bytes, decompressed if it is gzip (a corrupt archive is an IDXError naming it)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise IDXError(f"{path}: corrupt or truncated gzip data ({error})") from error


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in an IDX file, with its magic number, dimensions and length checked."""
    return parse_idx(read_content(os.fspath(path)), os.fspath(path))


def parse_idx(data: bytes, path: str) -> np.ndarray:
    """The array in IDX bytes `data` (`path` names the file in errors)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise IDXError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    type_code, ndim = data[2], data[3]
    if type_code not in _TYPES:
        raise IDXError(f"{path}: unknown IDX type code 0x{type_code:02x}")
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise IDXError(f"{path}: truncated header ({len(data)} bytes for {ndim} dimensions)")
    shape = tuple(int(n) for n in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_TYPES[type_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise IDXError(
            f"{path}: header says shape {shape} ({expected} bytes of data), but the file holds {len(data) - header}"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
