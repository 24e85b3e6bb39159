"""The IDX format of MNIST: a big-endian header (0, 0, type code, number of dimensions), one
uint32 per dimension, then the values row-major. Raw or gzip-compressed.

Files are read in chunks, never more than the header says: `read_idx` reads the header, refuses a
shape the file cannot hold (a raw file holds its size, a gzip file at most 1032 times it, deflate's
limit), reads exactly the data the shape needs and refuses a file with more. So a small file
never makes a big allocation, however its header or its compressed data lie.

>>> import gzip, io, tempfile, os
>>> from backprop.data.idx import read_idx
>>> path = os.path.join(tempfile.mkdtemp(), "tiny-idx1-ubyte.gz")
>>> with gzip.open(path, "wb") as f:
...     _ = f.write(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
>>> read_idx(path).tolist()
[7, 8, 9]
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import zlib

import numpy as np

from backprop.errors import UserError
from backprop.files import MAX_DEFLATE_RATIO

# IDX type code -> big-endian NumPy dtype
_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
CHUNK = 1 << 20  # bytes read (and decompressed) at a time


class IDXError(UserError, ValueError):
    """A file that is not a valid IDX file (the message names it)."""


@contextlib.contextmanager
def _opened(path: str):
    """(binary stream of the content, decompressed if gzip; the most bytes it can yield). Corrupt
    gzip data read from it is an IDXError naming the file."""
    with open(path, "rb") as raw:
        size = os.fstat(raw.fileno()).st_size
        compressed = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        try:
            if compressed:
                with gzip.GzipFile(fileobj=raw) as f:
                    yield f, size * MAX_DEFLATE_RATIO
            else:
                yield raw, size
        except (EOFError, gzip.BadGzipFile, zlib.error) as error:
            raise IDXError(f"{path}: corrupt or truncated gzip data ({error})") from error


def read_at_most(f, n: int) -> bytearray:
    """Up to `n` bytes of `f`, read in chunks: memory grows with what the file holds, not with `n`."""
    out = bytearray()
    while len(out) < n:
        block = f.read(min(CHUNK, n - len(out)))
        if not block:
            break
        out += block
    return out


def iter_content(path: str):
    """A file's bytes, decompressed if it is gzip, in chunks of at most `CHUNK` bytes."""
    with _opened(path) as (f, _):
        while block := f.read(CHUNK):
            yield block


def read_content(path: str) -> bytes:
    """A file's bytes, decompressed if it is gzip (a corrupt archive is an IDXError naming it).
    Unbounded: check the content first (`iter_content` streams it) where it may be hostile."""
    return b"".join(iter_content(path))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in an IDX file, with its magic number, dimensions and length checked
    before its data is read."""
    path = os.fspath(path)
    with _opened(path) as (f, most):
        head = f.read(4)
        ndim = head[3] if len(head) == 4 else 0
        head += read_at_most(f, 4 * ndim)
        shape, dtype, header = _header(head, path)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > most - header:
            raise IDXError(f"{path}: header says shape {shape} ({nbytes} bytes of data), more than the file can hold")
        body = read_at_most(f, nbytes)
        if len(body) == nbytes and f.read(1):
            raise IDXError(f"{path}: header says shape {shape} ({nbytes} bytes of data), but the file holds more")
    return _array(body, shape, dtype, path)


def _header(data: bytes, path: str) -> tuple:
    """(shape, dtype, header length) from the start of IDX bytes `data`."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise IDXError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    type_code, ndim = data[2], data[3]
    if type_code not in _TYPES:
        raise IDXError(f"{path}: unknown IDX type code 0x{type_code:02x}")
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise IDXError(f"{path}: truncated header ({len(data)} bytes for {ndim} dimensions)")
    shape = tuple(int.from_bytes(data[i : i + 4], "big") for i in range(4, header, 4))
    return shape, np.dtype(_TYPES[type_code]), header


def _array(body, shape: tuple, dtype: np.dtype, path: str) -> np.ndarray:
    expected = math.prod(shape) * dtype.itemsize  # Python integers: no overflow, however large the shape
    if len(body) != expected:
        raise IDXError(f"{path}: header says shape {shape} ({expected} bytes of data), but the file holds {len(body)}")
    return np.frombuffer(body, dtype).reshape(shape).astype(dtype.newbyteorder("="))


def parse_idx(data: bytes, path: str) -> np.ndarray:
    """The array in IDX bytes `data` (`path` names the file in errors)."""
    shape, dtype, header = _header(data, path)
    return _array(memoryview(data)[header:], shape, dtype, path)
