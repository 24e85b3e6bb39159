"""Writing files atomically: a half-written file never replaces a good one.

The content goes to a temporary file `.NAME.XXXXXXXX.part` beside the target, locked while it is
written, is flushed to disk, optionally verified, gets the permissions of the file it replaces (or
those a new file would get; the temporary file starts private), and is renamed over the target only
then; the folder is synced after the rename, so the new name survives a power cut.

Leftovers: a writer killed mid-write (kill -9, out of memory, a power cut) leaves its temporary
file; the next write of the same target removes it. A temporary file is stale when no process
holds its lock: the system drops a process's locks when it dies, however it dies, so the file of a
live writer (another process, or a machine sharing the folder over NFS) is never taken, and a
reused process id cannot fool it. Where file locks are unavailable (Windows, some network file
systems), leftovers stay.

Symlinks: writing to a symbolic link writes through to the file it points to (resolved fully, even
if it does not exist yet); the link stays a link, and the temporary file is made beside the target.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
import threading
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no locks, so no cleaning of leftovers
    fcntl = None

MAX_DEFLATE_RATIO = 1032  # no deflate stream (gzip, zip) expands more: 258-byte matches of 2 bits each

# this process's temporary files being written: on NFS a lock never excludes its own process;
# _CLAIMING makes "clean up, then make and register a new one" one step among this process's threads
_WRITING: set[str] = set()
_CLAIMING = threading.Lock()


def _umask() -> int:
    try:  # Linux: read it, since setting it to read it back races with other threads creating files
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _lock(fd: int, wait: bool) -> bool | None:
    """Lock an open file exclusively: True if locked, False if another process holds it (only when
    not waiting), None where locks are unavailable."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError:  # no locks on this file system
        return None
    return True


def _remove_stale(target: Path) -> None:
    """Remove the temporary files of `target` that no process is writing (see the module docstring)."""
    pattern = re.compile(re.escape(f".{target.name}.") + r"[a-z0-9_]{8}\.part")
    try:
        names = [name for name in os.listdir(target.parent) if pattern.fullmatch(name)]
    except OSError:
        return
    for name in names:
        partial = target.parent / name
        try:
            if os.path.abspath(partial) in _WRITING or not stat.S_ISREG(os.lstat(partial).st_mode):
                continue
            fd = os.open(partial, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            continue
        try:  # removed only while locked, and only if the name still is this file
            if _lock(fd, wait=False) and os.path.samestat(os.fstat(fd), os.lstat(partial)):
                os.remove(partial)
        except OSError:
            pass
        finally:
            os.close(fd)


def _new_temporary(target: Path) -> tuple[int, str]:
    """A new temporary file beside `target`, open and locked."""
    while True:
        handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        _lock(handle, wait=True)
        if os.fstat(handle).st_nlink > 0:  # not removed as stale by another writer before it was locked
            return handle, partial
        os.close(handle)


def _mode(target: Path) -> int:
    """The permission bits for `target`: those of the file it replaces, or those of a new file."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode) & 0o777  # not set-user-id: the new file has a new owner
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder
        pass
    finally:
        os.close(fd)


def _resolved(path) -> Path:
    """`path`, or the file it points to if it is a symbolic link."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def check_writable(path) -> None:
    """Raise an OSError now (naming `path`) if it could not be written: its folder, or the nearest
    existing one atomic_write would create it in, is not a folder or takes no new file (a probe
    file is made and removed there: permissions alone do not tell for root, read-only file
    systems or /proc)."""
    folder = _resolved(path).absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"{path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{path}: cannot write into {folder}")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".backprop-probe-"):
            pass
    except OSError as error:
        raise PermissionError(f"{path}: cannot write into {folder} ({error.strerror or error})") from None


def atomic_write(path, write, verify=None) -> None:
    """Call `write(binary_file)`, then `verify(temporary_path)` if given, then move into place
    (through a symbolic link, to the file it points to); first remove stale temporary files of the
    same target."""
    target = _resolved(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = _mode(target)
    with _CLAIMING:
        if fcntl is not None:
            _remove_stale(target)
        handle, partial = _new_temporary(target)
        _WRITING.add(os.path.abspath(partial))
    try:
        with os.fdopen(handle, "wb") as f:  # open, so locked, until it is renamed
            write(f)
            f.flush()
            os.fsync(f.fileno())
            if verify is not None:
                verify(partial)
            os.chmod(partial, mode)
            if os.name == "nt":  # Windows cannot rename an open file
                f.close()
            os.replace(partial, target)
        _sync_folder(target.parent)
    finally:
        _WRITING.discard(os.path.abspath(partial))
        if os.path.exists(partial):
            os.remove(partial)
