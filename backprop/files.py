"""Writing files atomically: a half-written file never replaces a good one.

The content goes to a temporary file beside the target, is optionally verified, gets the
permissions a new file would get (the temporary file starts private), and is renamed over
the target only then.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path) -> None:
    """Raise PermissionError now if `path` could not be written (its folder, or the nearest existing
    one atomic_write would create it in, is not writable)."""
    folder = Path(path).absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{path}: cannot write into {folder}")


def atomic_write(path, write, verify=None) -> None:
    """Call `write(binary_file)`, then `verify(temporary_path)` if given, then move into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
        if verify is not None:
            verify(partial)
        os.chmod(partial, 0o666 & ~_umask())
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
