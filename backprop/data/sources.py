"""Finding, checking and downloading dataset files.

A file is looked up in an explicit `data_dir`, then in $BACKPROP_DATA_DIR, then in the user
cache; otherwise it is downloaded into the cache from the mirrors, tried in order. Finding a file
needs neither the network nor pooch; downloading needs pooch (the `data` extra), whose HTTP
downloader (requests: TLS, proxies, redirects, streaming) fetches over https only: a mirror that
is not an https URL is refused before anything is fetched, and so is a redirect to one.

Every file's MD5 is verified on its decompressed content (so a copy whose gzip header was
rewritten, as Debian's Fashion-MNIST is, still matches). A download streams into backprop's
atomic writer (`backprop.files.atomic_write`: a locked temporary file beside the target, fsynced,
verified, renamed, folder synced, a killed writer's leftover removed by the next download), so a
failed or wrong download never leaves a file that looks complete, nor a stray temporary file.
pooch's own `retrieve` is not used: it neither syncs nor locks its temporary file, leaves it
behind when killed, and checks the compressed file's hash, not the content's.

The checksum is computed on the decompressed stream, a chunk at a time, before the content is read
into memory: a small compressed file that expands to gigabytes (a "gzip bomb") costs time to
reject, never memory.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from backprop.data.idx import iter_content, read_content
from backprop.errors import ConfigError, MissingDependency, UserError
from backprop.files import atomic_write
from backprop.progress import progress_bar

TIMEOUT = 30  # seconds without an answer before a mirror counts as failed
CHUNK = 1 << 16  # bytes written at a time
INSTALL = 'pip install "backprop[data]"'


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


def _is_https(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme.lower() == "https" and bool(parts.netloc)


def fetch(dataset: str, filename: str, checksum: str, mirrors, data_dir=None, download: bool = True):
    """(local path, verified decompressed content) of `filename` of `dataset`, downloaded if need be."""
    for path in _candidates(dataset, filename, data_dir):
        if path.is_file():
            return path, _verified(path, checksum)
    if not download:
        raise DataError(f"{dataset}/{filename} not found in {data_dir or '$BACKPROP_DATA_DIR'} or {cache_dir()}")
    urls = [mirror + filename for mirror in mirrors]
    for url in urls:
        if not _is_https(url):
            raise ConfigError(f"refusing to download {dataset}/{filename} from {url}: mirrors must be https:// URLs")
    where = "put the files in a folder and pass data_dir or set BACKPROP_DATA_DIR"
    if urls:
        try:
            from pooch import HTTPDownloader
        except ImportError as error:
            raise MissingDependency(
                f"could not download {dataset}/{filename}: downloading needs pooch ({INSTALL}); or {where}"
            ) from error
    target = cache_dir() / dataset / filename
    errors = []
    for url in urls:
        try:
            return _download(HTTPDownloader, url, target, checksum)
        except (OSError, ValueError, DataError) as error:
            errors.append(f"{url}: {_reason(error)}")
    raise DataError(f"could not download {dataset}/{filename} ({'; '.join(errors) or 'no mirrors'}); {where}")


def _refuse_plain_redirects(response, *args, **kwargs):
    """A requests response hook: a redirect away from https is an error, before it is followed."""
    if response.is_redirect:
        location = urljoin(response.url, response.headers["location"])
        if not _is_https(location):
            response.close()
            raise DataError(f"redirected to {location}: refusing a download that is not over https")
    return response


class _Bar:
    """pooch's progress-bar protocol (total, update, reset, close) on backprop's bar naming the file
    (silent without tqdm), made when the server answers: a mirror that cannot be reached shows none."""

    def __init__(self, name: str):
        self.name, self.bar, self.size, self.done = name, None, None, 0

    @property
    def total(self):
        return self.size

    @total.setter
    def total(self, total):
        self.size = total or None  # 0: the server did not say
        self.bar = progress_bar(self.size, f"downloading {self.name}", "B", unit_scale=True)

    def update(self, n):
        n = n if self.size is None else min(n, self.size - self.done)  # pooch counts whole chunks
        self.done += n
        self.bar.update(n)

    def reset(self):
        pass  # pooch resets, then adds the total: update has counted it already

    def close(self):
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def _reason(error: Exception) -> str:
    """The error on one line; for a connection that failed, urllib3's reason without its preamble."""
    cause = getattr(error.args[0], "reason", None) if error.args else None  # requests wraps a MaxRetryError
    text = " ".join(str(cause if isinstance(cause, Exception) else error).split())
    return re.sub(r"^\w*Connection(Pool)?\(host=[^)]*\): | for url: \S+$", "", text)  # the URL is named already


def _download(HTTPDownloader, url: str, target: Path, checksum: str):
    verified = {}

    def write(out):
        progress, hooks = _Bar(target.name), {"response": _refuse_plain_redirects}
        try:
            HTTPDownloader(progressbar=progress, chunk_size=CHUNK, timeout=TIMEOUT, hooks=hooks)(url, out, None)
        finally:
            progress.close()

    def verify(partial):
        verified["content"] = _verified(Path(partial), checksum)

    atomic_write(target, write, verify)
    return target, verified["content"]
