"""A toy array library that backprop has never heard of, for tests/test_backends.py.

Its arrays are immutable (a write is an error, as with JAX) and carry NumPy values behind a type of
their own, with a namespace of their own. Everything backprop needs to know about it is one
`BackendEntry`: registering that entry is all it takes to train on it.
"""

import operator

import numpy as np

from backprop.backend import NUMPY
from backprop.backends import BackendEntry


def _unwrap(value):
    if isinstance(value, ToyArray):
        return value.value
    if type(value) in (tuple, list):
        return type(value)(_unwrap(v) for v in value)
    return value


def _wrap(value):
    if isinstance(value, (np.ndarray, np.generic)):
        return ToyArray(value)
    if type(value) in (tuple, list) and value and isinstance(value[0], np.ndarray):
        return type(value)(ToyArray(v) for v in value)
    return value


class ToyArray:
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = np.array(value, copy=True)
        self.value.flags.writeable = False

    def __array_namespace__(self, api_version=None):
        return TOY

    shape = property(lambda self: self.value.shape)
    dtype = property(lambda self: self.value.dtype)
    ndim = property(lambda self: self.value.ndim)
    size = property(lambda self: self.value.size)
    device = property(lambda self: "cpu")
    mT = property(lambda self: ToyArray(self.value.mT))
    T = property(lambda self: ToyArray(self.value.T))

    def __len__(self):
        return len(self.value)

    def __getitem__(self, key):
        return ToyArray(self.value[_unwrap(key)])

    def __setitem__(self, key, value):
        raise TypeError("toy arrays are immutable")

    def __bool__(self):
        return bool(self.value)

    def __int__(self):
        return int(self.value)

    def __float__(self):
        return float(self.value)

    def __index__(self):
        return operator.index(self.value)

    def __repr__(self):
        return f"ToyArray({self.value!r})"


def _binary(op, reflected=False):
    def method(self, other):
        a, b = (_unwrap(other), self.value) if reflected else (self.value, _unwrap(other))
        return _wrap(op(a, b))

    return method


for _name in ("add", "sub", "mul", "truediv", "pow", "matmul", "lt", "le", "gt", "ge", "eq", "ne", "and_", "or_"):
    _dunder = _name.rstrip("_")
    setattr(ToyArray, f"__{_dunder}__", _binary(getattr(operator, _name)))
    if _name not in ("lt", "le", "gt", "ge", "eq", "ne"):
        setattr(ToyArray, f"__r{_dunder}__", _binary(getattr(operator, _name), reflected=True))
for _name in ("neg", "abs", "invert", "pos"):
    setattr(ToyArray, f"__{_name}__", (lambda op: lambda self: ToyArray(op(self.value)))(getattr(operator, _name)))
ToyArray.__hash__ = object.__hash__


class _ToyNamespace:
    """Every function of the standard, on toy arrays (NumPy underneath)."""

    __name__ = "toy"

    def __getattr__(self, name):
        real = getattr(NUMPY, name)
        if not callable(real) or isinstance(real, type):  # dtypes, constants
            return real

        def call(*args, **kwargs):
            return _wrap(real(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()}))

        setattr(self, name, call)
        return call


TOY = _ToyNamespace()


class ToyBackend(BackendEntry):
    """All backprop knows about toy arrays."""

    name, module = "toy", "toy_arrays"
    mutable = False  # writes are functional: set_at copies

    def installed(self):
        return True

    def load(self):
        return TOY

    def owns(self, xp):
        return xp is TOY

    def devices(self):
        return ["cpu"]

    def device(self, name):
        return None

    def set_at(self, array, key, values):
        copy = np.array(array.value, copy=True)
        copy[_unwrap(key)] = _unwrap(values)
        return ToyArray(copy)

    def to_host(self, array):
        return np.array(array.value, copy=True)
