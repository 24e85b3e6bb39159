"""Finding, checking and downloading dataset files.

A file is looked up in an explicit `data_dir`, then in $BACKPROP_DATA_DIR, then in the user
cache; otherwise it is downloaded from the public mirrors, with a progress bar, into the cache.
Every file's MD5 is verified on its decompressed content (so a copy whose gzip header was
rewritten, as Debian's Fashion-MNIST is, still matches); a download is written to a temporary file and renamed only once
complete and verified, so a failed or wrong download never leaves a file that looks complete.

The checksum is computed on the decompressed stream, a chunk at a time, before the content is read
into memory: a small compressed file that expands to gigabytes (a "gzip bomb") costs time to
reject, never memory.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from backprop.data.idx import iter_content, read_content
from backprop.errors import UserError
from backprop.files import atomic_write
from backprop.progress import progress_bar


class DataError(UserError, RuntimeError):
    """A dataset file that is missing, corrupt or cannot be fetched (the message says which)."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "backprop"


def _verified(path: Path, checksum: str) -> bytes:
    """The decompressed content of `path`, read only once its streamed MD5 matches `checksum`."""
    streamed = hashlib.md5()
    for block in iter_content(str(path)):
        streamed.update(block)
    _check_md5(path, streamed.hexdigest(), checksum)
    content = read_content(str(path))
    _check_md5(path, hashlib.md5(content).hexdigest(), checksum)  # the file may have changed meanwhile
    return content


def _check_md5(path: Path, actual: str, checksum: str) -> None:
    if actual != checksum:
        raise DataError(
            f"{path}: checksum mismatch (md5 of contents {actual}, expected {checksum}): the file is corrupt"
        )


def _candidates(dataset: str, filename: str, data_dir) -> list[Path]:
    roots = [data_dir, os.environ.get("BACKPROP_DATA_DIR")]
    found = []
    for root in filter(None, roots):
        found += [Path(root) / dataset / filename, Path(root) / filename]
    return found + [cache_dir() / dataset / filename]


def fetch(dataset: str, filename: str, checksum: str, mirrors, data_dir=None, download: bool = True):
    """(local path, verified decompressed content) of `filename` of `dataset`, downloaded if need be."""
    for path in _candidates(dataset, filename, data_dir):
        if path.is_file():
            return path, _verified(path, checksum)
    if not download:
        raise DataError(f"{dataset}/{filename} not found in {data_dir or '$BACKPROP_DATA_DIR'} or {cache_dir()}")
    target = cache_dir() / dataset / filename
    errors = []
    for mirror in mirrors:
        try:
            return _download(mirror + filename, target, checksum)
        except (OSError, ValueError, DataError) as error:
            errors.append(f"{mirror}: {error}")
    raise DataError(
        f"could not download {dataset}/{filename} ({'; '.join(errors)}); "
        "put the files in a folder and pass data_dir or set BACKPROP_DATA_DIR"
    )


def _download(url: str, target: Path, checksum: str):
    verified = {}

    def write(out):
        with urllib.request.urlopen(url, timeout=30) as response:
            total = int(response.headers.get("Content-Length") or 0)
            description = f"downloading {target.name}"
            with progress_bar(total or None, description, "B", unit_scale=True) as bar:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    bar.update(len(chunk))

    def verify(partial):
        verified["content"] = _verified(Path(partial), checksum)

    atomic_write(target, write, verify)
    return target, verified["content"]
