"""The backend flag: which array library creates new arrays, and on which device.

Ops never consult this module: they take the namespace of their inputs. The current backend
matters only where no array is given: creating tensors, drawing random numbers, loading data.

>>> import backprop as bp
>>> bp.get_backend().name
'numpy'
>>> with bp.use_backend("array_api_strict"):
...     bp.get_backend().name
'array_api_strict'
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from backprop.backends import BACKENDS, BackendEntry, BackendError, backend_of, get_entry  # noqa: F401 (BackendError: re-exported)


@dataclass(frozen=True)
class Backend:
    """An array namespace and the device on which new arrays are created."""

    name: str
    xp: Any
    device: Any = None

    @property
    def entry(self) -> BackendEntry:
        """What backprop knows about this library (backprop.backends)."""
        return BACKENDS[self.name]

    def asarray(self, data, dtype=None):
        """`data` (host array, nested lists or scalar) as an array of this backend."""
        if isinstance(dtype, str):
            dtype = getattr(self.xp, dtype)
        if self.device is None:
            return self.xp.asarray(data, dtype=dtype)
        with self.entry.on(self.device):
            return self.xp.asarray(data, dtype=dtype, device=self.device)

    def full(self, shape: tuple, value: float, dtype):
        """An array of `shape` filled with `value`, on this backend's device."""
        if self.device is None:
            return self.xp.full(shape, value, dtype=dtype)
        with self.entry.on(self.device):
            return self.xp.full(shape, value, dtype=dtype, device=self.device)

    @property
    def float_dtype(self):
        """The dtype given to tensors made from Python floats (float32, like PyTorch)."""
        return self.xp.float32


def installed_backends() -> list[str]:
    """Names of the backends whose library is installed (importable)."""
    return [name for name, entry in BACKENDS.items() if entry.installed()]


NUMPY = BACKENDS["numpy"].namespace()


def namespace_of(array):
    """The array namespace of `array`: NUMPY for NumPy arrays, else array-api-compat's."""
    if isinstance(array, (np.ndarray, np.generic)):
        return NUMPY
    return array_namespace(array)


def make_backend(name: str, device=None) -> Backend:
    """Resolve `name` (and `device`, checked against the devices there are) into a Backend.
    Without a device, a GPU backend under mpiexec takes the local rank's GPU (distributed.local_device)."""
    entry = get_entry(name)
    namespace = entry.namespace()
    if device is None and entry.on_gpu:
        from backprop.distributed import local_device

        device = local_device(entry)
    return Backend(name, namespace, entry.device(device))


_default: Backend | None = None  # resolved from BACKPROP_BACKEND on first use, so importing never fails
_scoped: contextvars.ContextVar[Backend | None] = contextvars.ContextVar("backprop_backend", default=None)


def get_backend() -> Backend:
    """The backend in force: the innermost `use_backend`, else the one `set_backend` chose."""
    return _scoped.get() or _default or _from_environment()


def _from_environment() -> Backend:
    """The process backend named by BACKPROP_BACKEND/BACKPROP_DEVICE (NumPy when unset), chosen once."""
    global _default
    name = os.environ.get("BACKPROP_BACKEND") or None
    device = os.environ.get("BACKPROP_DEVICE") or None
    if name is None and device is None:
        _default = Backend("numpy", NUMPY)
        return _default
    try:
        backend = make_backend(name or "numpy", device)
        backend.entry.select(backend.device)
        _default = backend
    except BackendError as error:
        settings = [f"BACKPROP_BACKEND={name!r}"] if name else []
        settings += [f"BACKPROP_DEVICE={device!r}"] if device else []
        setting = ", ".join(settings)
        raise BackendError(f"{setting}: {error}") from None
    return _default


def _chosen(name: str, device) -> Backend:
    """make_backend(name, device); without a device, BACKPROP_DEVICE's where BACKPROP_BACKEND names no
    other backend (as the command line's --backend does), checked now and named in the error."""
    env_backend = os.environ.get("BACKPROP_BACKEND") or None
    env_device = os.environ.get("BACKPROP_DEVICE") or None
    if device is not None or env_device is None or env_backend not in (None, name):
        return make_backend(name, device)
    try:
        return make_backend(name, env_device)
    except BackendError as error:
        raise BackendError(f"BACKPROP_DEVICE={env_device!r}: {error}") from None


def set_backend(name: str, device=None) -> Backend:
    """Choose the backend for the whole process (``"numpy"``, ``"cupy"``, ``"torch"``, ...), on
    `device` (default: BACKPROP_DEVICE where it is set, see `_chosen`); an uninstalled backend names
    its pip extra, and a device the backend lacks lists the ones it has.

    >>> import backprop as bp
    >>> bp.set_backend("numpy").name
    'numpy'
    """
    global _default
    backend = _chosen(name, device)
    backend.entry.select(backend.device)  # kernels run on it (CuPy runs them on the current device)
    _default = backend
    return _default


@contextlib.contextmanager
def use_backend(name: str, device=None):
    """Use a backend inside a ``with`` block only; blocks nest and restore on exit. The block
    gets `device` (checked), or the backend's default: BACKPROP_DEVICE is the process's choice,
    for set_backend, not for a library's or a test's scoped block."""
    backend = make_backend(name, device)
    token = _scoped.set(backend)
    try:
        with backend.entry.on(backend.device):  # kernels run on its device inside the block
            yield backend
    finally:
        _scoped.reset(token)


def backend_name(xp) -> str:
    """The name of the backend of an array namespace: ``array_api_compat.torch`` -> ``torch``."""
    return backend_of(xp).name


def dtype_name(dtype) -> str:
    """A dtype of any backend (or its name) as a plain name: ``torch.float32`` -> ``"float32"``."""
    return dtype if isinstance(dtype, str) else str(dtype).rsplit(".", 1)[-1]


def copy_array(array):
    """A copy of `array` on its own backend and device."""
    return namespace_of(array).asarray(array, copy=True)


def put_back(original, saved):
    """`saved` (values for `original`: a copy taken of it, a loaded state) as the array to hold:
    `original`, with them written in place, where its library can (what shares its memory, tied
    weights or a caller's reference, then sees them too); else `saved` itself."""
    entry = backend_of(namespace_of(original))
    same = original.shape == saved.shape and original.dtype == saved.dtype
    if entry.mutable and same and entry.writable_memory(original) is not None:
        return entry.set_at(original, ..., saved)
    return saved


def to_numpy(array) -> np.ndarray:
    """Copy any backend's array to a host NumPy array."""
    if isinstance(array, (np.ndarray, np.generic)):  # NumPy gives scalars for 0-d results
        return np.asarray(array)
    return backend_of(namespace_of(array)).to_host(array)


# --- random numbers: the standard has none, so one seeded host generator serves every backend ---

_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed the generator behind `randn`, `rand`, initializers and shuffling."""
    global _rng
    _rng = np.random.default_rng(seed)


def host_rng() -> np.random.Generator:
    """The seeded host generator (draw on the host, then move to the backend)."""
    return _rng


def get_rng_state() -> dict:
    return _rng.bit_generator.state


def set_rng_state(state: dict) -> None:
    _rng.bit_generator.state = state
