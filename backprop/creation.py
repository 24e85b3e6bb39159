"""Creating tensors on the current backend (see `backprop.backend`).

Random numbers are drawn from one seeded host generator and then moved, so a seed gives the
same values on every backend.

>>> import backprop as bp
>>> bp.manual_seed(0)
>>> w = bp.randn(2, 3, requires_grad=True)
>>> w.shape, w.requires_grad
((2, 3), True)
"""

from __future__ import annotations

from backprop.backend import dtype_name, get_backend, host_rng
from backprop.tensor import Tensor


def _shape(shape) -> tuple:
    return tuple(shape[0]) if len(shape) == 1 and not isinstance(shape[0], int) else tuple(shape)


def tensor(data, dtype=None, requires_grad: bool = False) -> Tensor:
    """A tensor from Python data or a host array, on the current backend.

    Python floats become float32 (as in PyTorch); arrays keep their dtype unless `dtype` is given.
    """
    backend = get_backend()
    if dtype is None and not hasattr(data, "dtype"):
        return Tensor(data, requires_grad=requires_grad)
    return Tensor(backend.asarray(data, dtype=dtype), requires_grad=requires_grad)


def zeros(*shape, dtype="float32", requires_grad: bool = False) -> Tensor:
    backend = get_backend()
    data = backend.full(_shape(shape), 0.0, getattr(backend.xp, dtype_name(dtype)))
    return Tensor(data, requires_grad=requires_grad)


def ones(*shape, dtype="float32", requires_grad: bool = False) -> Tensor:
    backend = get_backend()
    data = backend.full(_shape(shape), 1.0, getattr(backend.xp, dtype_name(dtype)))
    return Tensor(data, requires_grad=requires_grad)


def randn(*shape, dtype="float32", requires_grad: bool = False) -> Tensor:
    """Standard-normal samples (`bp.manual_seed` makes them reproducible)."""
    host = host_rng().standard_normal(_shape(shape)).astype(dtype_name(dtype))
    return Tensor(get_backend().asarray(host), requires_grad=requires_grad)


def rand(*shape, dtype="float32", requires_grad: bool = False) -> Tensor:
    """Uniform samples in [0, 1)."""
    host = host_rng().random(_shape(shape)).astype(dtype_name(dtype))
    return Tensor(get_backend().asarray(host), requires_grad=requires_grad)
