"""Tracing: record the array calls a function makes, as a straight-line Python function to replay.

`trace(function, arrays)` calls `function` once on stand-ins for `arrays`. The stand-ins compute
for real (the call is not wasted) and record every array operation: namespace calls
(`xp.tanh(a)`), operators (`a @ b`, `a -= b`), indexing and `.mT`. The record becomes the source
of a Python function of the same arrays, compiled once. Replaying it makes the same array calls
without the Python that decided on them: graph nodes, topological sorts, module calls. This is
how `backprop.step.TrainStep` captures a training step on backends without CUDA graphs.

A trace holds only while the function would make the same calls again: same shapes and dtypes,
and no decision taken on array values. Reading an array's value in Python (`float(a)`,
`if a > 0:`) and using an array that is not among the inputs (its value would be frozen into the
program) are errors that say so.

>>> import numpy as np
>>> program, results = trace(lambda a, b: [a @ b + 1.0], [np.ones((2, 3)), np.ones((3, 2))])
>>> print(program.source)
def program(a0, a1):
    v0 = a0 @ a1
    v1 = v0 + 1.0; del v0
    return (v1,)
>>> program(np.ones((2, 3)), np.full((3, 2), 2.0))[0].tolist()
[[7.0, 7.0], [7.0, 7.0]]
"""

from __future__ import annotations

import itertools
import math
import operator
import re

import numpy as np
from array_api_compat import device, is_array_api_obj

from backprop.backend import namespace_of
from backprop.backends import backend_of


class TraceError(RuntimeError):
    """The traced function did something a replay could not repeat."""


class _MissingAttribute(TraceError, AttributeError):
    """An attribute outside the standard: an error, which `hasattr` reads as absent."""


def _is_array(value) -> bool:
    if isinstance(value, type):  # NumPy's dtypes are classes, and their class has __array_namespace__
        return False
    return isinstance(value, np.generic) or is_array_api_obj(value)


class Program:
    """A traced function: call it with arrays like the ones it was traced with."""

    def __init__(self, source: str, names: dict):
        self.source = source
        scope = dict(names)
        exec(compile(source, "<backprop trace>", "exec"), scope)
        self._function = scope["program"]

    def __call__(self, *arrays):
        return self._function(*arrays)

    def __repr__(self) -> str:
        return f"Program({self.source.count(chr(10)) - 2} array calls)"


class _Recorder:
    """The lines of a trace and the objects its source refers to by name."""

    def __init__(self, xp):
        self.xp = xp
        self.namespace = _Namespace(self)
        self.lines: list[str] = []
        self.names: dict = {}  # name in the source -> object (functions, dtypes, devices)
        self._ids = itertools.count()

    def emit(self, expression: str, value):
        """Record `name = expression` for the array `value` (or a tuple of arrays); its stand-in."""
        if isinstance(value, (tuple, list)) and value and all(_is_array(v) for v in value):
            outs = [Traced(v, f"v{next(self._ids)}", self) for v in value]
            self.lines.append(f"{', '.join(o.name for o in outs)}, = {expression}")
            return type(value)(outs)
        if not _is_array(value):
            raise TraceError(f"{expression} gave a {type(value).__name__}, not an array")
        out = Traced(value, f"v{next(self._ids)}", self)
        self.lines.append(f"{out.name} = {expression}")
        return out

    def source_of(self, value) -> str:
        """`value` as source text: a stand-in's name, a literal, or the name of a bound object."""
        if isinstance(value, Traced):
            if value.recorder is not self:
                raise TraceError("an array from another trace was used in this one")
            return value.name
        kind = type(value)
        if value is None or value is Ellipsis or kind in (bool, int, str):
            return repr(value)
        if kind is float and math.isfinite(value):
            return repr(value)
        if kind is list:
            return f"[{', '.join(self.source_of(v) for v in value)}]"
        if kind is tuple:
            return f"({', '.join(self.source_of(v) for v in value)}{',' if len(value) == 1 else ''})"
        if kind is slice:
            return f"slice({self.source_of(value.start)}, {self.source_of(value.stop)}, {self.source_of(value.step)})"
        if _is_array(value) and not isinstance(value, np.generic):
            raise TraceError(
                f"an array of shape {tuple(value.shape)} that is not an input of the traced step was used in it: "
                "its value would be frozen into the replay (host random numbers, such as Dropout's, cannot be "
                "traced; arrays the step reads must be its inputs)"
            )
        name = f"c{len(self.names)}"
        self.names[name] = value
        return name

    def bind(self, name: str, value) -> str:
        """A global of the generated source (one per namespace function)."""
        self.names[name] = value
        return name


def _unwrap(value):
    """The concrete value behind stand-ins, also inside tuples and lists (indexing keys)."""
    if isinstance(value, Traced):
        return value.value
    if type(value) in (tuple, list):
        return type(value)(_unwrap(v) for v in value)
    return value


def _paren(source: str) -> str:
    """An operand that is not a name or an unsigned number gets parentheses (`(-1) ** v0`)."""
    return source if source.isidentifier() or source.replace(".", "", 1).isdigit() else f"({source})"


class Traced:
    """An array inside a trace: its concrete value and its name in the recorded program."""

    __slots__ = ("value", "name", "recorder")
    __array_ufunc__ = None  # NumPy defers `ndarray * Traced` to Traced.__rmul__ (which refuses it)
    __hash__ = object.__hash__

    def __init__(self, value, name: str, recorder: _Recorder):
        self.value, self.name, self.recorder = value, name, recorder

    def __array_namespace__(self, api_version=None):
        return self.recorder.namespace

    shape = property(lambda self: tuple(self.value.shape))
    dtype = property(lambda self: self.value.dtype)
    ndim = property(lambda self: self.value.ndim)
    size = property(lambda self: math.prod(self.value.shape))
    device = property(lambda self: device(self.value))
    mT = property(lambda self: self.recorder.emit(f"{self.name}.mT", self.value.mT))
    T = property(lambda self: self.recorder.emit(f"{self.name}.T", self.value.T))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        return self.recorder.emit(f"{self.name}[{self.recorder.source_of(key)}]", self.value[_unwrap(key)])

    def __setitem__(self, key, value) -> None:
        key_source, value_source = self.recorder.source_of(key), self.recorder.source_of(value)
        self.value[_unwrap(key)] = _unwrap(value)  # immutable arrays refuse, as they would outside a trace
        self.recorder.lines.append(f"{self.name}[{key_source}] = {value_source}")

    def _read(self, *_):
        raise TraceError(
            f"Python read the value of a traced array (shape {self.shape}): a replay would reuse this one "
            "value; keep decisions on array values out of a captured step"
        )

    __bool__ = __int__ = __float__ = __index__ = __complex__ = __array__ = __iter__ = __dlpack__ = _read

    def __getattr__(self, name):
        if name.startswith("__"):  # protocol probes (__dlpack__, __array_interface__, ...)
            raise AttributeError(name)
        raise _MissingAttribute(f"a traced array has no {name!r}: a traced step may use only the array API standard")

    def __repr__(self) -> str:
        return f"Traced({self.name}, shape={self.shape}, dtype={self.dtype})"


_BINARY = {
    "add": "+", "sub": "-", "mul": "*", "truediv": "/", "floordiv": "//", "mod": "%", "pow": "**",
    "matmul": "@", "and": "&", "or": "|", "xor": "^", "lshift": "<<", "rshift": ">>",
}  # fmt: skip
_COMPARISONS = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}


def _binary(symbol: str, op, reflected: bool):
    def method(self, other):
        rec = self.recorder
        left, right = (rec.source_of(other), self.name) if reflected else (self.name, rec.source_of(other))
        a, b = (_unwrap(other), self.value) if reflected else (self.value, _unwrap(other))
        return rec.emit(f"{_paren(left)} {symbol} {_paren(right)}", op(a, b))

    return method


def _in_place(symbol: str, op):
    def method(self, other):
        self.value = op(self.value, _unwrap(other))  # in place where the backend's arrays are mutable
        self.recorder.lines.append(f"{self.name} {symbol}= {_paren(self.recorder.source_of(other))}")
        return self

    return method


def _unary(template: str, op):
    return lambda self: self.recorder.emit(template.format(self.name), op(self.value))


for _name, _symbol in _BINARY.items():
    _op = getattr(operator, _name + "_" if _name in ("and", "or") else _name)
    setattr(Traced, f"__{_name}__", _binary(_symbol, _op, reflected=False))
    setattr(Traced, f"__r{_name}__", _binary(_symbol, _op, reflected=True))
    setattr(Traced, f"__i{_name}__", _in_place(_symbol, getattr(operator, f"i{_name}")))
for _name, _symbol in _COMPARISONS.items():
    setattr(Traced, f"__{_name}__", _binary(_symbol, getattr(operator, _name), reflected=False))
for _name, _template in {"neg": "-{}", "pos": "+{}", "invert": "~{}", "abs": "abs({})"}.items():
    setattr(Traced, f"__{_name}__", _unary(_template, getattr(operator, _name)))


class _Namespace:
    """The array namespace of stand-ins: each call runs the real function and is recorded.

    Calls that give no array (`isdtype`, `finfo`, `result_type`) run without being recorded: their
    answers depend on dtypes and shapes only, which a replay shares.
    """

    def __init__(self, recorder: _Recorder):
        self._recorder = recorder
        self.__name__ = f"traced {getattr(recorder.xp, '__name__', 'namespace')}"
        self.backend_entry = _TracedEntry(backend_of(recorder.xp), recorder)

    def __getattr__(self, name):
        real = getattr(self._recorder.xp, name)
        if not callable(real) or isinstance(real, type):  # dtypes, constants, classes
            return real
        call = _recorded(self._recorder, "xp_" + name, real)
        setattr(self, name, call)  # looked up once per name
        return call


def _recorded(recorder: _Recorder, name: str, real):
    """`real`, run on concrete values and recorded as a call of the global `name` when it gives arrays."""

    def call(*args, **kwargs):
        value = real(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()})
        if not (_is_array(value) or (isinstance(value, (tuple, list)) and value and _is_array(value[0]))):
            return value
        arguments = [recorder.source_of(a) for a in args]
        arguments += [f"{k}={recorder.source_of(v)}" for k, v in kwargs.items()]
        return recorder.emit(f"{recorder.bind(name, real)}({', '.join(arguments)})", value)

    return call


class _TracedEntry:
    """The backend entry of stand-ins: the real entry's answers, with its array helpers (`set_at`,
    `scatter_add`) recorded as calls, and no value readable."""

    def __init__(self, real, recorder: _Recorder):
        self._real, self._recorder = real, recorder

    def __getattr__(self, name):
        value = getattr(self._real, name)
        if name in self._real.helpers:
            value = _recorded(self._recorder, name, value)
        setattr(self, name, value)
        return value

    def readable(self, array) -> bool:
        return False

    def to_host(self, array):
        array._read()


_INTERMEDIATE = re.compile(r"\bv\d+\b")


def _free_after_last_use(lines: list[str], returned: str) -> list[str]:
    """`lines` with `del` after each intermediate's last use, so a replay frees memory as the
    eager engine does (a local would otherwise keep every intermediate alive until the return)."""
    last_use = {}
    for i, line in enumerate(lines):
        for name in _INTERMEDIATE.findall(line):
            last_use[name] = i
    for name in _INTERMEDIATE.findall(returned):
        last_use.pop(name, None)
    freed = [[] for _ in lines]
    for name, i in last_use.items():
        freed[i].append(name)
    return [line + (f"; del {', '.join(names)}" if names else "") for line, names in zip(lines, freed, strict=True)]


def trace(function, arrays) -> tuple[Program, list]:
    """Call `function(*stand_ins)` once; return its record as a Program of the same arrays, and
    what this call returned (concrete arrays).

    `function` returns a list of arrays (or None entries); so does the program.
    """
    arrays = list(arrays)
    if not arrays:
        raise ValueError("trace needs at least one input array")
    recorder = _Recorder(namespace_of(arrays[0]))
    inputs = [Traced(a, f"a{i}", recorder) for i, a in enumerate(arrays)]
    outputs = list(function(*inputs))
    returned = ", ".join(recorder.source_of(out) for out in outputs)
    body = "".join(f"    {line}\n" for line in _free_after_last_use(recorder.lines, returned))
    source = f"def program({', '.join(t.name for t in inputs)}):\n{body}    return ({returned}{',' if outputs else ''})"
    return Program(source, recorder.names), [_unwrap(out) for out in outputs]
