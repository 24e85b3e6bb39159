"""Tracing: record the array calls a function makes, to replay them without the Python around them.

`trace(function, arrays)` calls `function` once on stand-ins for `arrays`. The stand-ins compute
for real (the call is not wasted) and record every array operation as a `Call` of a `Trace`:
namespace functions (`xp.tanh(a)`), operators (`a @ b`, `a -= b`), indexing, `.mT`, and the
backend entry's helpers (`set_at`, `scatter_add`, `one_hot`). A Trace is plain data: the function called,
its arguments (the `Var`s of earlier values, and constants) and the Vars it produced. From it
`Program` generates a straight-line Python function, compiled once, that frees each intermediate
after its last use; `Trace.run` interprets the same record; other replayers can consume it too.
Replaying makes the same array calls without the Python that decided on them: graph nodes,
topological sorts, module calls. This is how `backprop.step.TrainStep` captures a training step
on backends without CUDA graphs.

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
>>> [call.name or call.function.__name__ for call in program.trace.calls]
['matmul', 'add']
"""

from __future__ import annotations

import keyword
import math
import operator
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from array_api_compat import device, is_array_api_obj

from backprop.backend import namespace_of, to_numpy
from backprop.backends import backend_of
from backprop.errors import a


class TraceError(RuntimeError):
    """The traced function did something a replay could not repeat."""


class _MissingAttribute(TraceError, AttributeError):
    """An attribute outside the standard: an error, which `hasattr` reads as absent."""


def _is_array(value) -> bool:
    if isinstance(value, type):  # NumPy's dtypes are classes, and their class has __array_namespace__
        return False
    return isinstance(value, np.generic) or is_array_api_obj(value)


def is_traced(array) -> bool:
    """Whether `array` is a stand-in inside a trace (its values cannot be read now)."""
    return isinstance(array, Traced)


# --- the record ---


class Var:
    """A value of a trace: an input (`a0`, `a1`, ...) or a value a call computed (`v0`, ...)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Call:
    """One recorded operation: `outputs = function(*args, **kwargs)`.

    `args` and `kwargs` hold Vars and constants, also inside tuples, lists and slices (indexing
    keys). A call that returns several arrays has `unpack` set and one output each; an in-place
    operator (`a -= b`) outputs the Var it rebinds; a write (`a[k] = b`) outputs nothing. `name`
    is the global through which the generated source calls `function` ("" for Python syntax:
    operators, indexing, attributes). `standard` names the array API function the call computes
    (a namespace call, or a library's own form of one that a pass put in its place), "" for any
    other call (operators, backend helpers, external calls, writes). `external` marks a call the
    tracer could not look into (`external`): it may reach outside the array library.
    """

    function: Any
    args: tuple
    kwargs: dict
    outputs: tuple
    name: str = ""
    unpack: bool = False
    standard: str = ""
    external: bool = False


@dataclass(frozen=True)
class Spec:
    """What a trace knows of a value besides its Var: shape, dtype and type (an array class, or a
    NumPy scalar's), and where the library has them, its strides (its memory layout: a result
    written into another array takes that array's, and a later reduction adds in memory order)."""

    shape: tuple
    dtype: Any
    kind: type
    strides: tuple | None = field(default=None, compare=False)


def spec_of(value) -> Spec:
    shape, strides = tuple(value.shape), getattr(value, "strides", None)
    if isinstance(strides, tuple):  # a size-1 axis has any stride: it steps nowhere
        strides = tuple(0 if n == 1 else step for n, step in zip(shape, strides, strict=True))
    return Spec(shape, value.dtype, type(value), strides if isinstance(strides, tuple) else None)


class Trace:
    """What one call of a function did to arrays: its inputs, its calls in order, what it returned
    (Vars, constants, or None).

    What the recording saw, for `backprop.optimize`: `specs` {Var: Spec} of every value;
    `constants` {Var: value} of the values computed from constants alone; `identities` {Var: Var}
    where a call gave back the very array it was given.
    """

    def __init__(self, inputs: list, calls: list, outputs: list, specs=None, constants=None, identities=None):
        self.inputs, self.calls, self.outputs = inputs, calls, outputs
        self.specs: dict = {} if specs is None else specs
        self.constants: dict = {} if constants is None else constants
        self.identities: dict = {} if identities is None else identities

    def last_uses(self) -> dict:
        """{Var: the index of the last call that names it} (inputs and returned values too)."""
        last = {}
        for i, call in enumerate(self.calls):
            for var in _vars_in((call.args, call.kwargs, call.outputs)):
                last[var] = i
        return last

    def deaths(self) -> list[list]:
        """For each call, the intermediates no later call uses and the trace does not return:
        a replay may free them right after it (as the eager engine frees its graph)."""
        last = self.last_uses()
        for var in (*self.inputs, *_vars_in(self.outputs)):
            last.pop(var, None)
        dying = [[] for _ in self.calls]
        for var, i in last.items():
            dying[i].append(var)
        return dying

    def run(self, *arrays) -> list:
        """Replay the record by interpreting it, call by call (the generated Program does the same
        work without the interpretation)."""
        values = dict(zip(self.inputs, arrays, strict=True))
        for call, dead in zip(self.calls, self.deaths(), strict=True):
            args = _resolve(call.args, values)
            result = call.function(*args, **{k: _resolve(v, values) for k, v in call.kwargs.items()})
            values.update(zip(call.outputs, result if call.unpack else (result,) * len(call.outputs), strict=True))
            for var in dead:
                del values[var]
        return [_resolve(out, values) for out in self.outputs]


def _vars_in(value):
    """The Vars inside an argument (tuples, lists, dicts and slices searched)."""
    if isinstance(value, Var):
        yield value
    elif type(value) in (tuple, list):
        for item in value:
            yield from _vars_in(item)
    elif type(value) is dict:
        yield from _vars_in(list(value.values()))
    elif type(value) is slice:
        yield from _vars_in((value.start, value.stop, value.step))


def _resolve(value, values: dict):
    """An argument with its Vars replaced by their values."""
    if isinstance(value, Var):
        return values[value]
    if type(value) in (tuple, list):
        return type(value)(_resolve(v, values) for v in value)
    if type(value) is slice:
        return slice(*(_resolve(v, values) for v in (value.start, value.stop, value.step)))
    return value


# --- the generated program ---

_ARITHMETIC = {
    "add": "+",
    "sub": "-",
    "mul": "*",
    "truediv": "/",
    "floordiv": "//",
    "mod": "%",
    "pow": "**",
    "matmul": "@",
    "and": "&",
    "or": "|",
    "xor": "^",
    "lshift": "<<",
    "rshift": ">>",
}  # fmt: skip (dunder names: __add__, __radd__, __iadd__)
_COMPARISONS = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}


def _operator(name: str):
    return getattr(operator, name + "_" if name in ("and", "or") else name)


_INFIX = {_operator(name): symbol for name, symbol in {**_ARITHMETIC, **_COMPARISONS}.items()}
_IN_PLACE = {getattr(operator, "i" + name): symbol for name, symbol in _ARITHMETIC.items()}
_UNARY = {operator.neg: "-{}", operator.pos: "+{}", operator.invert: "~{}", operator.abs: "abs({})"}
MATRIX_TRANSPOSE, TRANSPOSE = operator.attrgetter("mT"), operator.attrgetter("T")  # `.mT`, `.T`
_ATTRIBUTES = {MATRIX_TRANSPOSE: "{}.mT", TRANSPOSE: "{}.T"}


def _uniform(host) -> bool:
    """Whether every element of a NumPy array has the first one's bits (-0.0 is not 0.0)."""
    if not host.size or host.dtype.hasobject:
        return False
    rows = host.flatten().view("u1").reshape(host.size, host.itemsize)
    return bool((rows == rows[0]).all())


def _paren(source: str) -> str:
    """An operand that is not a name or an unsigned number gets parentheses (`(-1) ** v0`)."""
    return source if source.isidentifier() or source.replace(".", "", 1).isdigit() else f"({source})"


class Program:
    """A trace as a compiled straight-line Python function: call it with arrays like the ones it
    was traced with. `source` is its text; `trace` the record it was generated from."""

    def __init__(self, trace: Trace):
        self.trace = trace
        self._globals: dict = {}
        self.source = self._generate()
        scope = dict(self._globals)
        exec(compile(self.source, "<backprop trace>", "exec"), scope)
        self._function = scope["program"]

    def __call__(self, *arrays):
        return self._function(*arrays)

    def __repr__(self) -> str:
        return f"Program({len(self.trace.calls)} array calls)"

    def __str__(self) -> str:
        return self.source

    def _generate(self) -> str:
        trace = self.trace
        lines = []
        for call, dead in zip(trace.calls, trace.deaths(), strict=True):
            freed = f"; del {', '.join(var.name for var in dead)}" if dead else ""
            lines.append(f"    {self._statement(call)}{freed}\n")
        returned = ", ".join(self._render(out) for out in trace.outputs)
        arguments = ", ".join(var.name for var in trace.inputs)
        constants = "".join(f"    # {line}\n" for line in self._constants())
        body = "".join(lines)
        return f"def program({arguments}):\n{constants}{body}    return ({returned}{',' if trace.outputs else ''})"

    def _constants(self) -> list[str]:
        """A line for each array the program holds as a constant: its value if it is a number,
        else its dtype and shape (and its value where every element has it)."""
        lines = []
        for name, value in self._globals.items():
            if name.startswith("c") and _is_array(value):
                host, shape = to_numpy(value), tuple(value.shape)
                described = f"{host!s} ({value.dtype})" if not shape else f"{value.dtype} array of shape {shape}"
                every = f", every element {host.flat[0]!s}" if shape and _uniform(host) else ""
                lines.append(f"{name} = {described}{every}")
        return lines

    def _statement(self, call: Call) -> str:
        args = [self._render(a) for a in call.args]
        if call.function in _IN_PLACE:
            return f"{args[0]} {_IN_PLACE[call.function]}= {_paren(args[1])}"
        if call.function is operator.setitem:
            return f"{args[0]}[{args[1]}] = {args[2]}"
        if call.outputs and call.outputs == (call.kwargs.get("out"),):  # writes its result into `out`
            return self._expression(call, args)
        targets = ", ".join(var.name for var in call.outputs) + ("," if call.unpack else "")
        return f"{targets} = {self._expression(call, args)}"

    def _expression(self, call: Call, args: list) -> str:
        function = call.function
        if call.name:
            arguments = args + [f"{k}={self._render(v)}" for k, v in call.kwargs.items()]
            return f"{self._bind(_global_name(call.name), function)}({', '.join(arguments)})"
        if function in _INFIX:
            return f"{_paren(args[0])} {_INFIX[function]} {_paren(args[1])}"
        if function is operator.getitem:
            return f"{args[0]}[{args[1]}]"
        if function in _UNARY:
            return _UNARY[function].format(_paren(args[0]))
        return _ATTRIBUTES[function].format(args[0])

    def _render(self, value) -> str:
        """An argument as source: a Var's name, a literal, or the name of a bound constant."""
        if isinstance(value, Var):
            return value.name
        kind = type(value)
        if value is None or value is Ellipsis or kind in (bool, int, str) or (kind is float and math.isfinite(value)):
            return repr(value)
        if kind is list:
            return f"[{', '.join(self._render(v) for v in value)}]"
        if kind is tuple:
            return f"({', '.join(self._render(v) for v in value)}{',' if len(value) == 1 else ''})"
        if kind is slice:
            return f"slice({self._render(value.start)}, {self._render(value.stop)}, {self._render(value.step)})"
        for bound, existing in self._globals.items():  # dtypes, devices: one global per object
            if existing is value and bound.startswith("c"):
                return bound
        return self._bind(f"c{sum(name.startswith('c') for name in self._globals)}", value)

    def _bind(self, name: str, value) -> str:
        """`name` (or `name_1`, ... if it is taken by another object) as a global for `value`."""
        unique, count = name, 1
        while unique in self._globals and self._globals[unique] is not value:
            unique, count = f"{name}_{count}", count + 1
        self._globals[unique] = value
        return unique


def _global_name(name: str) -> str:
    """A function's name as a global a program can call: an identifier that is no keyword, and no
    name of its own (arguments a0.., values v0.., constants c0.., `program`)."""
    if not name.isidentifier() or keyword.iskeyword(name):
        return "external"  # a lambda, a partial's "<...>" name
    return f"f_{name}" if re.fullmatch(r"[acv]\d+|program", name) else name


# --- recording ---


class _Recorder:
    """Builds a Trace: the calls the stand-ins of one trace make."""

    def __init__(self, xp):
        self.xp = xp
        self.namespace = _Namespace(self)
        self.calls: list[Call] = []
        self.specs: dict = {}
        self.constants: dict = {}  # values computed from constants alone
        self.identities: dict = {}  # outputs that are the very array a call was given
        self._count = 0

    def record(self, function, args: tuple, kwargs: dict, value, name: str = "", **kinds):
        """Append the call that computed `value` (an array, or a tuple or list of arrays); the
        stand-in(s) for `value`. `name` and `kinds` (`standard`, `external`) are the Call's."""
        arguments, keywords = self.argument(args), {k: self.argument(v) for k, v in kwargs.items()}
        if isinstance(value, (tuple, list)) and value and all(_is_array(v) for v in value):
            outs = type(value)(self._traced(v) for v in value)
            outputs = tuple(o.var for o in outs)
            self.calls.append(Call(function, arguments, keywords, outputs, name, unpack=True, **kinds))
            self._note(arguments, keywords, outs, [])
            return outs
        if not _is_array(value):
            what = name or getattr(function, "__name__", function)
            raise TraceError(f"{what} gave {a(type(value).__name__)}, not an array")
        out = self._traced(value)
        self.calls.append(Call(function, arguments, keywords, (out.var,), name, **kinds))
        self._note(arguments, keywords, [out], args)
        return out

    def _traced(self, value) -> Traced:
        traced = Traced(value, self._new_var(), self)
        self.specs[traced.var] = spec_of(value)
        return traced

    def _note(self, arguments, keywords, outs, args) -> None:
        """Keep the values computed from constants alone, and note an output that is the very
        array the call was given."""
        if all(var in self.constants for var in _vars_in((arguments, keywords))):
            self.constants.update((out.var, out.value) for out in outs)
        for arg in args:
            if isinstance(arg, Traced) and arg.value is outs[0].value:
                self.identities[outs[0].var] = arg.var

    def argument(self, value):
        """`value` as the record holds it: a stand-in's Var, or a constant (arrays cannot be)."""
        if isinstance(value, Traced):
            if value.recorder is not self:
                raise TraceError("an array from another trace was used in this one")
            return value.var
        kind = type(value)
        if kind in (tuple, list):
            return kind(self.argument(v) for v in value)
        if kind is slice:
            return slice(self.argument(value.start), self.argument(value.stop), self.argument(value.step))
        if _is_array(value) and not isinstance(value, np.generic):
            raise TraceError(
                f"an array of shape {tuple(value.shape)} that is not an input of the traced step was used in it: "
                "its value would be frozen into the replay (host random numbers, such as Dropout's, cannot be "
                "traced; arrays the step reads must be its inputs)"
            )
        return value

    def _new_var(self) -> Var:
        self._count += 1
        return Var(f"v{self._count - 1}")


def _unwrap(value):
    """The concrete value behind stand-ins, also inside tuples and lists (indexing keys)."""
    if isinstance(value, Traced):
        return value.value
    if type(value) in (tuple, list):
        return type(value)(_unwrap(v) for v in value)
    return value


class Traced:
    """An array inside a trace: its concrete value and the Var that stands for it in the record."""

    __slots__ = ("value", "var", "recorder")
    __array_ufunc__ = None  # NumPy defers `ndarray * Traced` to Traced.__rmul__ (which refuses it)
    __hash__ = object.__hash__

    def __init__(self, value, var: Var, recorder: _Recorder):
        self.value, self.var, self.recorder = value, var, recorder

    def __array_namespace__(self, api_version=None):
        return self.recorder.namespace

    name = property(lambda self: self.var.name)
    shape = property(lambda self: tuple(self.value.shape))
    dtype = property(lambda self: self.value.dtype)
    ndim = property(lambda self: self.value.ndim)
    size = property(lambda self: math.prod(self.value.shape))
    device = property(lambda self: device(self.value))
    mT = property(lambda self: self.recorder.record(MATRIX_TRANSPOSE, (self,), {}, self.value.mT))
    T = property(lambda self: self.recorder.record(TRANSPOSE, (self,), {}, self.value.T))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        return self.recorder.record(operator.getitem, (self, key), {}, self.value[_unwrap(key)])

    def __setitem__(self, key, value) -> None:
        arguments = self.recorder.argument((self, key, value))
        self.value[_unwrap(key)] = _unwrap(value)  # immutable arrays refuse, as they would outside a trace
        self.recorder.calls.append(Call(operator.setitem, arguments, {}, ()))
        self.recorder.constants.pop(self.var, None)

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


def _binary(op, reflected: bool):
    def method(self, other):
        args = (other, self) if reflected else (self, other)
        return self.recorder.record(op, args, {}, op(*_unwrap(args)))

    return method


def _unary(op):
    return lambda self: self.recorder.record(op, (self,), {}, op(self.value))


def _in_place(op):
    def method(self, other):
        arguments = self.recorder.argument((self, other))
        self.value = op(self.value, _unwrap(other))  # in place where the backend's arrays are mutable
        self.recorder.calls.append(Call(op, arguments, {}, (self.var,)))
        self.recorder.specs[self.var] = spec_of(self.value)
        self.recorder.constants.pop(self.var, None)
        return self

    return method


for _name in _ARITHMETIC:
    setattr(Traced, f"__{_name}__", _binary(_operator(_name), reflected=False))
    setattr(Traced, f"__r{_name}__", _binary(_operator(_name), reflected=True))
    setattr(Traced, f"__i{_name}__", _in_place(getattr(operator, "i" + _name)))
for _name in _COMPARISONS:
    setattr(Traced, f"__{_name}__", _binary(_operator(_name), reflected=False))
for _op in _UNARY:
    setattr(Traced, f"__{_op.__name__}__", _unary(_op))


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
        call = _recorded(self._recorder, "xp_" + name, real, standard=name)
        setattr(self, name, call)  # looked up once per name
        return call


def _recorded(recorder: _Recorder, name: str, real, **kinds):
    """`real`, run on concrete values and recorded (as a call of the global `name`) when it gives
    arrays; `kinds`: what the Call says of it (`standard`, `external`)."""

    def call(*args, **kwargs):
        value = real(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()})
        if not (_is_array(value) or (isinstance(value, (tuple, list)) and value and _is_array(value[0]))):
            return value
        return recorder.record(real, args, kwargs, value, name, **kinds)

    return call


def external(function, *arrays):
    """`function(*arrays)` for a call the tracer cannot look into (an all-reduce over MPI, a host
    callback): run on the values now and, inside a trace, recorded as one call that replays make
    again. `function` must give arrays and must not read their values to decide what to do.

    >>> import numpy as np
    >>> program, _ = trace(lambda a: [external(np.cumsum, a) * 2.0], [np.ones(3)])
    >>> program(np.arange(3.0))[0].tolist()
    [0.0, 2.0, 6.0]
    """
    recorder = next((a.recorder for a in arrays if isinstance(a, Traced)), None)
    if recorder is None:
        return function(*arrays)
    return _recorded(recorder, getattr(function, "__name__", "external"), function, external=True)(*arrays)


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

    def writable_memory(self, array):
        return id(array)  # a replay's gradients are arrays it computes anew, never a caller's view

    def to_host(self, array):
        array._read()


def trace(function, arrays) -> tuple[Program, list]:
    """Call `function(*stand_ins)` once; return its record as a Program of the same arrays, and
    what this call returned (concrete arrays).

    `function` returns a list of arrays (or None entries); so does the program.
    """
    arrays = list(arrays)
    if not arrays:
        raise ValueError("trace needs at least one input array")
    recorder = _Recorder(namespace_of(arrays[0]))
    inputs = [Traced(a, Var(f"a{i}"), recorder) for i, a in enumerate(arrays)]
    recorder.specs.update((t.var, spec_of(t.value)) for t in inputs)
    outputs = list(function(*inputs))
    returned = [recorder.argument(out) for out in outputs]
    notes = recorder.specs, recorder.constants, recorder.identities
    record = Trace([t.var for t in inputs], recorder.calls, returned, *notes)
    return Program(record), [_unwrap(out) for out in outputs]
