"""Optimizing a recorded step before it is replayed: passes over a `backprop.trace.Trace`, each
giving a Trace that computes the same arrays, bit for bit.

Every backend (the program stays pure array API):

- `fold_constants`: calls on constants alone (`xp.asarray(1.0) / 10`, `xp.arange(10)[None, :]`)
  ran once, when the step was recorded: their values join the program as constants;
- `drop_identities`: calls that gave back their own input (`xp.asarray` of an array that is
  already of that dtype and device);
- `eliminate_common`: a pure call made again on the same arguments reuses the first result;
- `eliminate_dead`: pure calls whose results nothing uses.

Where the backend entry declares a `FastPath` (NumPy):

- `lower_reductions`: `xp.sum`, `xp.max` become the ufunc reductions they wrap (`np.add.reduce`);
- `scalars_as_arrays`: a Python number beside an array becomes a 0-d array of its dtype (NumPy
  converts a Python number on every call; the result is the same, as NumPy casts it to that dtype);
- `reuse_buffers`: an element-wise call writes its result into an operand that dies there (`v += a`,
  `tanh(v, out=v)`): a temporary, or an optimizer state array the step replaces (updated in place);
- `widen_scalars`: `maximum(v, c, out=v)` beside a 0-d array c takes a constant of v's shape full
  of c (NumPy's loop for a broadcast scalar is not vectorized for `maximum` and `minimum`: a
  128 x 512 float32 relu takes 19.5 us, against 3.4 us beside an array).

Reassociating scalar factors (`lr * (g / B)` as `(lr / B) * g`) would change the rounding, and the
step returns `g` itself, so it is not done: chains of constants fold instead (`1.0 / B` once).

>>> import numpy as np
>>> from backprop.trace import Program, trace
>>> from backprop.backends import BACKENDS
>>> def f(a, b):
...     xp = a.__array_namespace__()
...     c = xp.asarray(1.0) / 2          # a constant: folded
...     return [xp.tanh(a * c + b) * 0.5]
>>> program, _ = trace(f, [np.ones((2, 3)), np.ones((2, 3))])
>>> print(Program(optimize(program.trace, BACKENDS["numpy"].fast_path())).source)
def program(a0, a1):
    # c0 = 0.5 (float64)
    # c1 = 0.5 (float64)
    v2 = a0 * c0
    v2 += a1
    tanh(v2, out=v2)
    v2 *= c1
    return (v2,)
"""

from __future__ import annotations

import math
import operator
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from backprop.trace import _ATTRIBUTES, _IN_PLACE, _INFIX, _UNARY, Call, Trace, Var, _vars_in


@dataclass(frozen=True)
class FastPath:
    """What one library offers beyond the standard that a replay may use (NumPy's, see
    `backprop.backends.NumPyBackend.fast_path`)."""

    array_type: type  # its writable arrays (NumPy scalars are not: never written into)
    floating: Callable[[Any], bool]  # whether a dtype is a real floating one
    with_out: Callable[[Any], Any]  # a function or operator -> the same computation taking out=, or None
    same_type: Callable[[Any, Any], bool]  # (function or operator, dtype): computes in that dtype from
    # operands of it alone (then a Python number beside such an operand may be a 0-d array of it)
    reduction: Callable[[Any], Any]  # a namespace reduction -> the ufunc reduction it wraps, or None
    scalar: Callable[[Any, Any], Any]  # (number, dtype) -> a 0-d array
    scalar_slow: Callable[[Any], bool]  # functions slower beside a broadcast 0-d array than beside a full one
    full: Callable[[Any, tuple], Any]  # (0-d array, shape) -> a read-only array of that shape full of it


def optimize(trace: Trace, fast_path: FastPath | None = None, donated=()) -> Trace:
    """`trace` after every pass that applies: the generic ones, then the fast path's. `donated`
    are inputs the program may overwrite once it no longer reads them (the optimizer's state: the
    step returns new arrays for it). The result keeps no notes of the recording (specs, constants):
    a replay holds only its calls."""
    trace = eliminate_dead(eliminate_common(drop_identities(fold_constants(trace))))
    if fast_path is not None:
        trace = lower_reductions(trace, fast_path)
        trace = scalars_as_arrays(trace, fast_path)
        trace = reuse_buffers(trace, fast_path, donated)
        trace = widen_scalars(trace, fast_path)
    return Trace(trace.inputs, trace.calls, trace.outputs)


# --- what a pass needs to know about calls ---

# namespace functions whose results never share memory with their arguments
_FRESH = frozenset(
    "abs acos acosh add asin asinh atan atan2 atanh bitwise_and bitwise_or bitwise_xor ceil clip concat "
    "cos cosh cumulative_sum divide equal exp expm1 floor floor_divide greater greater_equal hypot "
    "isfinite isinf isnan less less_equal log log1p log2 log10 logaddexp logical_and logical_not logical_or "
    "matmul max maximum mean min minimum multiply negative not_equal pow prod remainder round sign sin sinh "
    "sqrt square stack std subtract sum tan tanh tensordot trunc var vecdot where argmax argmin arange "
    "zeros ones full empty eye linspace zeros_like ones_like full_like empty_like".split()
)
_IN_PLACE_OF = {getattr(operator, name): getattr(operator, "i" + name) for name in ("add", "sub", "mul", "truediv")}


def _pure(call: Call) -> bool:
    """A call that only computes (no writes, no host side): namespace functions, operators,
    indexing and attributes. In-place operators, writes, backend helpers and external calls are not."""
    function = call.function
    if call.name:
        return bool(call.standard)
    return function in _INFIX or function in _UNARY or function in _ATTRIBUTES or function is operator.getitem


def _fresh(call: Call) -> bool:
    """A pure call whose results are new arrays, never views of its arguments."""
    if call.name:
        name = call.standard
        return name in _FRESH or (name == "astype" and call.kwargs.get("copy", True) is not False)
    return call.function in _INFIX or call.function in _UNARY


class _Aliases:
    """Which values may share memory: a call that is not fresh (a view, a write, an unknown
    function), or one that gave back its input, joins its results with its array arguments
    (union-find)."""

    def __init__(self, trace: Trace):
        self._parent: dict = {}
        for out, source in trace.identities.items():  # a "fresh" call that gave back its input
            self._union(source, out)
        for call in trace.calls:
            if not _fresh(call):
                args = list(_vars_in((call.args, call.kwargs)))
                for var in (*call.outputs, *args[1:]):
                    self._union(args[0] if args else var, var)

    def root(self, var: Var) -> Var:
        parent = self._parent.get(var, var)
        while parent is not var:
            var, parent = parent, self._parent.get(parent, parent)
        return var

    def _union(self, a: Var, b: Var) -> None:
        self._parent[self.root(b)] = self.root(a)

    def members(self) -> dict:
        """{root: {vars}} of every class with more than one var."""
        classes: dict = {}
        for var in self._parent:
            classes.setdefault(self.root(var), {var}).add(var)
        for root, members in classes.items():
            members.add(root)
        return classes


def _touched(trace: Trace, aliases: _Aliases) -> set:
    """Roots of the values a write or an external call may change, and of the returned ones."""
    roots = {aliases.root(var) for var in _vars_in(trace.outputs)}
    for call in trace.calls:
        if not _pure(call):
            roots.update(aliases.root(var) for var in _vars_in((call.args, call.kwargs, call.outputs)))
    return roots


def _substitute(value, mapping: dict):
    """`value` (an argument: Vars, also in tuples, lists, slices and dicts) with Vars replaced."""
    if isinstance(value, Var):
        return mapping.get(value, value)
    kind = type(value)
    if kind in (tuple, list):
        return kind(_substitute(v, mapping) for v in value)
    if kind is slice:
        return slice(*(_substitute(v, mapping) for v in (value.start, value.stop, value.step)))
    if kind is dict:
        return {k: _substitute(v, mapping) for k, v in value.items()}
    return value


def _rewritten(call: Call, mapping: dict) -> Call:
    """`call` with the Vars of `mapping` replaced, in its arguments and (in-place calls) outputs;
    `call` itself where it names none of them."""
    if not mapping or not any(var in mapping for var in _vars_in((call.args, call.kwargs, call.outputs))):
        return call
    args, kwargs = _substitute(call.args, mapping), _substitute(call.kwargs, mapping)
    return replace(call, args=args, kwargs=kwargs, outputs=tuple(mapping.get(var, var) for var in call.outputs))


def _derive(trace: Trace, calls: list, mapping: dict, **changes) -> Trace:
    """A Trace like `trace` with `calls`, its outputs renamed by `mapping`, and `changes`."""
    outputs = [_substitute(out, mapping) for out in trace.outputs]
    parts = {"specs": trace.specs, "constants": trace.constants, "identities": trace.identities, **changes}
    return Trace(trace.inputs, calls, outputs, **parts)


# --- the generic passes ---


def fold_constants(trace: Trace) -> Trace:
    """Calls whose arguments are all constants ran when the step was recorded; their values
    (which the trace kept) replace them. Never a value the step returns or that a write or an
    external call could reach: the program shares a folded value between calls."""
    aliases = _Aliases(trace)
    touched = _touched(trace, aliases)
    folded, calls = {}, []
    for call in trace.calls:
        call = _rewritten(call, folded)
        out = call.outputs[0] if len(call.outputs) == 1 else None
        if out in trace.constants and _pure(call) and aliases.root(out) not in touched:
            folded[out] = trace.constants[out]
        else:
            calls.append(call)
    return _derive(trace, calls, folded)


def drop_identities(trace: Trace) -> Trace:
    """A pure call that gave back the very array it was given (`xp.asarray(a)` of an array already
    of that dtype and device) is that array. Not where an in-place operator rebinds one of the two
    (on immutable values it rebinds a name, not the array), nor where the array was folded away."""
    rebound = {call.args[0] for call in trace.calls if call.function in _IN_PLACE}
    same, calls = {}, []
    for call in trace.calls:
        call = _rewritten(call, same)
        out = call.outputs[0] if len(call.outputs) == 1 else None
        source = same.get(trace.identities.get(out), trace.identities.get(out))
        still_there = source is not None and any(var is source for var in _vars_in(call.args))
        if still_there and _pure(call) and not {out, source} & rebound:
            same[out] = source
        else:
            calls.append(call)
    return _derive(trace, calls, same)


def _key(value):
    """A hashable stand-in for an argument: Vars and objects by identity, numbers with their type
    (floats by their repr, so that 0.0 and -0.0 differ)."""
    kind = type(value)
    if kind in (tuple, list):
        return (kind, *map(_key, value))
    if kind is slice:
        return (slice, _key(value.start), _key(value.stop), _key(value.step))
    if kind is dict:
        return (dict, *((k, _key(v)) for k, v in value.items()))
    if kind is float:
        return (float, struct.pack("<d", value))  # its bits: 0.0 and -0.0 differ, and NaN and -NaN
    if value is None or kind in (bool, int, str):
        return (kind, value)
    return (object, id(value))


def _multiplied(trace: Trace, aliases: _Aliases) -> set:
    """The values a matrix product takes (and those they view): merged, `x @ y.T` could become
    `x @ x.T`, which NumPy computes with another BLAS routine (syrk, not gemm): other last bits."""
    products = [call for call in trace.calls if call.function is operator.matmul or call.standard == "matmul"]
    return {aliases.root(var) for call in products for var in _vars_in(call.args)}


def eliminate_common(trace: Trace) -> Trace:
    """A pure call repeated on the same arguments (with no write in between) reuses the first
    result. Values a write or an external call may reach are left alone."""
    aliases = _Aliases(trace)
    touched = _touched(trace, aliases) | _multiplied(trace, aliases)
    seen, same, calls = {}, {}, []
    for call in trace.calls:
        call = _rewritten(call, same)
        if not _pure(call):
            seen.clear()  # it may have changed what the arguments of later calls hold
            calls.append(call)
            continue
        if any(aliases.root(var) in touched for var in call.outputs):
            calls.append(call)
            continue
        key = (id(call.function), call.name, call.unpack, _key(call.args), _key(call.kwargs))
        first = seen.get(key)
        if first is None:
            seen[key] = call
            calls.append(call)
        else:
            same.update(zip(call.outputs, first.outputs, strict=True))
    return _derive(trace, calls, same)


def eliminate_dead(trace: Trace) -> Trace:
    """Pure calls none of whose results is used later or returned."""
    live = set(_vars_in(trace.outputs))
    kept = []
    for call in reversed(trace.calls):
        if _pure(call) and not live.intersection(call.outputs):
            continue
        live.update(_vars_in((call.args, call.kwargs)))
        kept.append(call)
    return _derive(trace, kept[::-1], {})


# --- the fast path's passes ---


def lower_reductions(trace: Trace, fast: FastPath) -> Trace:
    """`xp.sum(v, axis=0)` as `add_reduce(v, axis=0)` where the library's own reduction is the same
    computation with fewer layers around it (real floating inputs; no dtype argument)."""
    calls = []
    for call in trace.calls:
        lowered = fast.reduction(call.function) if call.standard else None
        arg = call.args[0] if len(call.args) == 1 else None  # one array, and no dtype or out
        spec = trace.specs.get(arg) if isinstance(arg, Var) else None
        plain = set(call.kwargs) <= {"axis", "keepdims"}
        if lowered is not None and plain and spec and _float(spec, fast):
            kwargs = {"axis": None, **call.kwargs}  # a ufunc reduces axis 0 by default, the standard every axis
            call = replace(call, function=lowered, kwargs=kwargs, name=f"{lowered.__self__.__name__}_reduce")
        calls.append(call)
    return _derive(trace, calls, {})


def _float(spec, fast: FastPath) -> bool:
    return spec.kind is fast.array_type and fast.floating(spec.dtype)


def scalars_as_arrays(trace: Trace, fast: FastPath) -> Trace:
    """`v * 0.5` as `v * c` with c a 0-d array of v's dtype, where every array operand and the
    result have that (real floating) dtype and the function computes in it from operands of it
    alone (`fast.same_type`: not `ldexp`, whose exponent is an integer)."""
    constants: dict = {}
    calls = []
    for call in trace.calls:
        operands = call.args
        arrays = [trace.specs[a] for a in operands if isinstance(a, Var)]
        out = trace.specs.get(call.outputs[0]) if len(call.outputs) == 1 else None
        same_dtype = out is not None and all(s.dtype == out.dtype for s in arrays)
        if arrays and same_dtype and _float(out, fast) and fast.same_type(call.function, out.dtype):
            operands = tuple(_as_array(a, out.dtype, fast, constants) for a in operands)
            call = replace(call, args=operands)
        calls.append(call)
    return _derive(trace, calls, {})


def _as_array(value, dtype, fast: FastPath, constants: dict):
    if type(value) not in (int, float):
        return value
    key = (type(value), _key(value), dtype)  # its bits: -0.0 is not 0.0, nor -NaN NaN
    if key not in constants:
        constants[key] = fast.scalar(value, dtype)
    return constants[key]


_WIDE = (64, 8 << 20, 32 << 20)  # widened: results from 64 elements to 8 MiB (past the cache, memory
# traffic decides: a 4096 x 4096 float64 relu is slower beside a full array), 32 MiB in all


def widen_scalars(trace: Trace, fast: FastPath) -> Trace:
    """`maximum(v, c, out=v)`, c a 0-d array of v's dtype, as `maximum(v, C, out=v)`, C a constant
    of v's shape full of c, where `fast.scalar_slow(function)`. Each element is the same
    computation; only the loop differs. Only where the result goes into v itself: its memory
    layout is then v's, whatever C's (a new result would follow C's, and a later reduction add
    in another order). One constant per value and shape."""
    constants: dict = {}
    calls = []
    for call in trace.calls:
        into = call.kwargs.get("out")
        spec = trace.specs.get(into) if isinstance(into, Var) and len(call.args) == 2 else None
        if spec is not None and set(call.kwargs) == {"out"} and _float(spec, fast) and fast.scalar_slow(call.function):
            elements = math.prod(spec.shape)
            wide = _WIDE[0] <= elements and elements * spec.dtype.itemsize <= _WIDE[1]
            if wide and any(a is into for a in call.args):
                call = replace(call, args=tuple(_full(a, spec, fast, constants) for a in call.args))
        calls.append(call)
    return _derive(trace, calls, {})


def _full(value, out, fast: FastPath, constants: dict):
    """`value`, or where it is a 0-d array of `out`'s dtype, a constant of out's shape full of it
    (while the pass's constants stay within 32 MiB in all)."""
    if isinstance(value, Var) or not isinstance(value, fast.array_type) or value.shape or value.dtype != out.dtype:
        return value
    key = (id(value), out.shape)  # value: a constant the trace holds, alive as long as it
    if key not in constants:
        if sum(c.nbytes for c in constants.values()) + math.prod(out.shape) * out.dtype.itemsize > _WIDE[2]:
            return value
        constants[key] = fast.full(value, out.shape)
    return constants[key]


def reuse_buffers(trace: Trace, fast: FastPath, donated=()) -> Trace:
    """An element-wise call writes its result into an operand that dies there, when the two have
    the same shape and dtype: `v1 = v0 + a` becomes `v0 += a` (then v0 stands for v1), `1 - v`
    becomes `subtract(1, v, out=v)`, `tanh(v)` becomes `tanh(v, out=v)`.

    The operand must be the program's own array: a fresh temporary, or a `donated` input
    (optimizer state the step replaces); never returned, handed to an external call, or seen
    later through a view, also a view of what it stood for before.
    """
    buffers = _Buffers(trace, donated)
    renamed, calls = {}, []
    for i, call in enumerate(trace.calls):
        call = _rewritten(call, renamed)
        buffer = _buffer(call, i, trace, fast, buffers)
        if buffer is None:
            calls.append(call)
            continue
        calls.append(_into(call, buffer, fast))
        renamed[call.outputs[0]] = buffer
        buffers.rename(call.outputs[0], buffer)
    return _derive(trace, calls, renamed)


class _Buffers:
    """What `reuse_buffers` knows of each value: whether the program owns it, the last call that
    uses it, and the values that may share its memory (joined when one value takes over another's)."""

    def __init__(self, trace: Trace, donated):
        self.last = _last_uses(trace, donated)
        aliases = _Aliases(trace)
        self._root = aliases.root
        self._classes = aliases.members()
        kept = set(trace.inputs) - {trace.inputs[i] for i in donated}
        owned = {var for call in trace.calls if _fresh(call) for var in call.outputs}
        owned |= {trace.inputs[i] for i in donated} - set(_vars_in(trace.outputs))
        self.owned = {var for var in owned if not kept & self.sharing(var)} - _handed_out(trace)

    def sharing(self, var: Var) -> set:
        """`var` and every value that may share its memory."""
        return self._classes.get(self._root(var), {var})

    def free_after(self, var: Var, i: int) -> bool:
        """Whether nothing reads `var`'s memory after call i."""
        return all(self.last.get(member, -1) <= i for member in self.sharing(var))

    def rename(self, out: Var, buffer: Var) -> None:
        """`buffer` now holds `out`: it lives as long as out, and shares memory with out's views."""
        self.last[buffer] = self.last.get(out, -1)
        self._classes[self._root(buffer)] = self.sharing(buffer) | self.sharing(out)


def _handed_out(trace: Trace) -> set:
    """Values given to a call that is neither pure nor an in-place operator (an external call, a
    backend helper, a write `a[k] = v`): it may keep them, so nothing is written into them later."""
    handed = set()
    for call in trace.calls:
        if not _pure(call) and call.function not in _IN_PLACE:
            handed.update(_vars_in((call.args, call.kwargs)))
    return handed


def _last_uses(trace: Trace, donated=()) -> dict:
    """`trace.last_uses()`, with returned values and the inputs that are not `donated` counted as
    used after the last call."""
    last = trace.last_uses()
    kept = [var for i, var in enumerate(trace.inputs) if i not in donated]
    for var in (*kept, *_vars_in(trace.outputs)):
        last[var] = len(trace.calls)
    return last


def _buffer(call: Call, i: int, trace: Trace, fast: FastPath, buffers: _Buffers):
    """The operand of `call` that may receive its result, or None."""
    if len(call.outputs) != 1 or call.unpack or "out" in call.kwargs or fast.with_out(call.function) is None:
        return None
    out = trace.specs.get(call.outputs[0])
    if out is None or out.kind is not fast.array_type:
        return None
    for var in call.args:
        if not isinstance(var, Var) or var not in buffers.owned:
            continue
        spec = trace.specs[var]
        if spec != out or spec.strides != out.strides:  # the result keeps the layout it was recorded with
            continue
        once = sum(arg is var for arg in call.args) == 1  # `v * v` cannot write into v
        if once and buffers.free_after(var, i):
            return var
    return None


def _into(call: Call, buffer: Var, fast: FastPath) -> Call:
    """`call` writing its result into `buffer` (one of its operands)."""
    # `a + b` into b stays add(a, b, out=b), not `b += a`: of two NaNs, NumPy keeps the first one's sign
    if call.function in _IN_PLACE_OF and call.args[0] is buffer:
        return Call(_IN_PLACE_OF[call.function], call.args, {}, (buffer,))
    function = fast.with_out(call.function)
    return Call(function, call.args, {**call.kwargs, "out": buffer}, (buffer,), function.__name__)
