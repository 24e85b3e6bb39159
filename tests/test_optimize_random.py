"""Random straight-line programs (NumPy): the optimized program gives the recorded program's bits,
dtypes, shapes and memory layouts, for inputs of the recorded layouts (C, Fortran, transposed
views, strided and reversed slices), and writes into no input that was not donated."""

import math
import operator
from dataclasses import dataclass

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from backprop import optimize as opt
from backprop.backends import BACKENDS
from backprop.trace import Program, trace

SCALARS = [0.0, -0.0, 0.5, 1.0, 2.0, -1.5, 3.0, math.nan, -math.nan, math.inf]  # -nan: its sign bit set
ARITHMETIC = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
IN_PLACE = {"+": operator.iadd, "-": operator.isub, "*": operator.imul, "/": operator.itruediv}
LAYOUTS = {1: ["C", "step", "reversed"], 2: ["C", "F", "T", "step", "columns", "reversed"]}


@dataclass(frozen=True)
class Case:
    """A program: inputs (shape, dtype, layout), ops on the values before them (the inputs are
    values 0.., each op but an in-place one adds the next), the values returned, the donated inputs,
    and the seeds of the values it is recorded with and run on."""

    inputs: tuple
    ops: tuple
    outputs: tuple
    donated: tuple
    seeds: tuple
    special: bool  # NaN and infinities among the input values

    def __repr__(self) -> str:  # the falsifying example, as a program to read
        names = [f"a{i}" for i in range(len(self.inputs))]
        lines = [f"{names[i]}: {shape} {dtype} {layout}" for i, (shape, dtype, layout) in enumerate(self.inputs)]
        for op in self.ops:
            line = _source(op, names)
            if op[0] != "in-place":
                names.append(f"v{len(names) - len(self.inputs)}")
                line = f"{names[-1]} = {line}"
            lines.append(line)
        lines.append(f"return {', '.join(names[i] for i in self.outputs)}")
        extras = f"donated={list(self.donated)}, seeds={self.seeds}, special={self.special}"
        return "Case(\n    " + "\n    ".join(lines) + f"\n    {extras}\n)"


def _source(op, names) -> str:
    kind, *rest = op
    show = lambda x: names[x] if isinstance(x, int) else repr(x)  # noqa: E731
    if kind in ("binary", "in-place"):
        symbol, x, y = rest
        return f"{show(x)} {symbol}{'=' if kind == 'in-place' else ''} {show(y)}"
    if kind == "call":
        name, *args = rest
        return f"xp.{name}({', '.join(map(show, args))})"
    if kind == "reduce":
        name, x, axis, keepdims = rest
        return f"xp.{name}({show(x)}{'' if axis == 'all' else f', axis={axis}'}, keepdims={keepdims})"
    if kind == "full":
        return f"xp.full({rest[0]}, {rest[1]!r}, dtype=xp.{rest[2]})"
    if kind == "matmul":
        return f"{show(rest[0])} @ {show(rest[1])}"
    if kind == "neg":
        return f"-{show(rest[0])}"
    if kind == "T":
        return f"{show(rest[0])}.T"
    if kind == "reshape":
        return f"xp.reshape({show(rest[0])}, {rest[1]})"
    return f"xp.astype({show(rest[0])}, xp.{rest[1]})"  # astype


def _apply(xp, values: list, op) -> None:
    """Run `op` on `values` (stand-ins in a trace, or NumPy arrays), appending its result."""
    kind, *rest = op
    get = lambda x: values[x] if isinstance(x, int) else x  # noqa: E731
    if kind == "in-place":
        symbol, x, y = rest
        IN_PLACE[symbol](values[x], get(y))  # a stand-in or an array: changed in place
        return
    if kind == "binary":
        result = ARITHMETIC[rest[0]](get(rest[1]), get(rest[2]))
    elif kind == "call":
        result = getattr(xp, rest[0])(*map(get, rest[1:]))
    elif kind == "reduce":
        name, x, axis, keepdims = rest
        axes = {} if axis == "all" else {"axis": axis}  # "all": the standard's default, every axis
        result = getattr(xp, name)(values[x], **axes, keepdims=keepdims)
    elif kind == "full":  # a constant: calls on constants alone are folded
        result = xp.full(rest[0], rest[1], dtype=getattr(xp, rest[2]))
    elif kind == "matmul":
        result = values[rest[0]] @ values[rest[1]]
    elif kind == "neg":
        result = -values[rest[0]]
    elif kind == "T":
        result = values[rest[0]].T
    elif kind == "reshape":
        result = xp.reshape(values[rest[0]], rest[1])
    else:
        result = xp.astype(values[rest[0]], getattr(xp, rest[1]))
    values.append(result)


def _function(case: Case):
    def f(*arrays):
        xp = arrays[0].__array_namespace__()
        values = list(arrays)
        for op in case.ops:
            _apply(xp, values, op)
        return [values[i] for i in case.outputs]

    return f


class _Values:
    """What generating a program knows of its values: NumPy arrays standing for them (each op runs
    on them, so the next one knows every shape and dtype), the op that made each one, and the
    value whose memory each one is (through views and `asarray`)."""

    def __init__(self, inputs: list, shapes: list):
        self.shapes = shapes  # of new constants
        self.arrays = [np.ones(shape, dtype) for shape, dtype, _ in inputs]
        self.made = [None] * len(inputs)  # the op of each value (None: an input)
        self.base = list(range(len(inputs)))
        self.written: set = set()  # bases an in-place op changed

    def add(self, op) -> None:
        with np.errstate(all="ignore"):
            _apply(np, self.arrays, op)
        if op[0] != "in-place":
            view = op[1] if op[0] in ("T", "reshape") else op[2] if op[:2] == ("call", "asarray") else None
            self.made.append(op)
            self.base.append(len(self.base) if view is None else self.base[view])
        else:
            self.written.add(self.base[op[2]])


def _operands(op) -> tuple:
    """The positions of an op's tuple that name values (the others are numbers, names, shapes)."""
    kind = op[0]
    if kind in ("binary", "in-place"):
        return tuple(k for k in (2, 3) if type(op[k]) is int)
    if kind == "call":
        return tuple(k for k in range(2, len(op)) if type(op[k]) is int)
    return (1, 2) if kind == "matmul" else (2,) if kind == "reduce" else () if kind == "full" else (1,)


@st.composite
def _ops(draw, values: _Values, count: int) -> list:
    """`count` ops on `values`."""
    ops = []
    kinds = ["binary"] * 4 + ["scalar"] * 3 + ["extremum"] * 3 + ["unary"] * 3 + ["reduce"] * 2 + ["matmul"] * 2
    kinds += ["T", "T", "reshape", "reshape", "astype", "asarray", "full"] + ["in-place"] * 3 + ["again"] * 3
    pending = None  # an op to make again after a write into what it read
    while len(ops) < count:
        arrays = values.arrays
        kind = "pending" if pending else draw(st.sampled_from(kinds))
        last = len(arrays) - 1  # chains often, the value before the last, and the last one's memory (a view's)
        x = draw(st.sampled_from([last, last - 1, values.base[last], draw(st.integers(0, last))]))
        shape, array = np.shape(arrays[x]), isinstance(arrays[x], np.ndarray)
        partners = [j for j, v in enumerate(arrays) if _broadcasts(shape, np.shape(v))]
        scalar, dtypes = st.sampled_from(SCALARS), st.sampled_from(["float32", "float64"])
        if kind == "binary":
            op = ("binary", draw(st.sampled_from(list(ARITHMETIC))), x, draw(st.sampled_from(partners)))
            op = op if draw(st.booleans()) else (*op[:2], op[3], op[2])
        elif kind == "scalar":
            op = ("binary", draw(st.sampled_from(list(ARITHMETIC))), x, draw(scalar))
            op = op if draw(st.booleans()) else (*op[:2], op[3], op[2])  # 1.0 - v too
        elif kind == "extremum":
            other = draw(st.sampled_from(partners)) if draw(st.booleans()) else draw(scalar)
            args = (x, other) if draw(st.booleans()) else (other, x)
            op = ("call", draw(st.sampled_from(["maximum", "minimum"])), *args)
        elif kind == "unary":
            name = draw(st.sampled_from(["tanh", "exp", "abs", "neg"]))
            op = ("neg", x) if name == "neg" else ("call", name, x)
        elif kind == "reduce" and len(shape) >= 1:
            axis = draw(st.sampled_from([None, "all", *range(len(shape)), -1]))
            op = ("reduce", draw(st.sampled_from(["sum", "mean", "max"])), x, axis, draw(st.booleans()))
        elif kind == "matmul" and len(shape) == 2:
            inner = [j for j, v in enumerate(arrays) if np.ndim(v) == 2 and np.shape(v)[0] == shape[1]]
            if not inner:
                continue
            op = ("matmul", x, draw(st.sampled_from(inner)))
        elif kind == "T" and len(shape) in (1, 2):
            op = ("T", x)
        elif kind == "reshape" and len(shape) >= 1:
            size = int(np.prod(shape))
            options = [(size,), (1, size), (size, 1)] + ([shape[::-1]] if len(shape) == 2 else [])
            op = ("reshape", x, draw(st.sampled_from(options)))
        elif kind == "astype":
            op = ("astype", x, draw(dtypes))
        elif kind == "asarray":
            op = ("call", "asarray", x)  # the very array: an identity
        elif kind == "full":
            op = ("full", draw(st.sampled_from(values.shapes)), draw(scalar), draw(dtypes))
        elif kind == "pending":
            op, pending = pending, None
        elif kind == "again" and any(op[0] != "in-place" for op in ops):  # an op made again (merged), or
            op = draw(st.sampled_from([op for op in ops if op[0] != "in-place"]))  # with another scalar
            if draw(st.booleans()):  # -0.0 for 0.0
                other = lambda arg: -arg if arg == 0.0 or draw(st.booleans()) else draw(scalar)  # noqa: E731
                op = tuple(other(arg) if type(arg) is float else arg for arg in op)
        elif kind == "in-place" and array and values.made[values.base[x]] is not None:  # not an input's memory
            into = [j for j in partners if np.broadcast_shapes(shape, np.shape(arrays[j])) == shape]
            other = draw(st.sampled_from(into)) if into and draw(st.booleans()) else draw(scalar)
            op = ("in-place", draw(st.sampled_from(list(IN_PLACE))), x, other)
            base = values.base[x]
            read = [o for o in ops if o[0] != "in-place" and any(values.base[o[k]] == base for k in _operands(o))]
            pending = draw(st.sampled_from(read)) if read and draw(st.booleans()) else None  # made again after
        else:
            continue
        values.add(op)
        ops.append(op)
    return ops


def _broadcasts(a: tuple, b: tuple) -> bool:
    try:
        np.broadcast_shapes(a, b)
    except ValueError:
        return False
    return True


@st.composite
def cases(draw) -> Case:
    if draw(st.booleans()):  # from 64 elements, maximum and minimum beside a scalar are widened
        m, n = draw(st.sampled_from([8, 16])), draw(st.sampled_from([16, 8, 64]))
    else:
        m, n = draw(st.sampled_from([3, 2, 1])), draw(st.sampled_from([5, 2, 1]))
    shapes = [(m, n), (n,), (1, n), (m, 1), (n, m)]
    inputs = []
    for _ in range(draw(st.integers(2, 4))):
        shape = draw(st.sampled_from(shapes))
        dtype = draw(st.sampled_from(["float32", "float64"]))
        inputs.append((shape, dtype, draw(st.sampled_from(LAYOUTS[len(shape)]))))
    values = _Values(inputs, [*shapes, ()])
    ops = draw(_ops(values, draw(st.integers(1, 10))))
    last = len(values.arrays) - 1
    outputs = draw(st.lists(st.integers(0, last), min_size=1, max_size=6, unique=True))
    if draw(st.booleans()) and last not in outputs:  # the last value: its chain lives
        outputs.insert(draw(st.integers(0, len(outputs))), last)
    free = [i for i in range(len(inputs)) if i not in outputs]
    donated = sorted(draw(st.sets(st.sampled_from(free)))) if free and draw(st.integers(0, 2)) else []
    seeds = (draw(st.integers(0, 2**16)), draw(st.integers(0, 2**16)))
    return Case(tuple(inputs), tuple(ops), tuple(outputs), tuple(donated), seeds, draw(st.integers(0, 3)) == 0)


def _host(case: Case, seed: int) -> list:
    """Input values in C order: normal ones of two scales, +0.0 and -0.0, and (special) NaN and infinities."""
    rng = np.random.default_rng(seed)
    hosts = []
    for shape, dtype, _ in case.inputs:
        x = rng.standard_normal(shape) * rng.choice([1.0, 4.0])
        pick = rng.random(shape)
        x[pick < 0.1], x[(0.1 <= pick) & (pick < 0.2)] = 0.0, -0.0
        if case.special:
            x[pick > 0.96], x[(0.93 < pick) & (pick <= 0.96)] = np.nan, np.inf
            x[(0.9 < pick) & (pick <= 0.93)] = -np.inf
        hosts.append(x.astype(dtype))
    return hosts


def _laid_out(host: np.ndarray, layout: str) -> np.ndarray:
    """A new array of `host`'s values in `layout` (the gaps of a strided one hold NaN)."""
    if layout == "C":
        return np.array(host, order="C")
    if layout == "F":
        return np.array(host, order="F")
    if layout == "T":  # a transposed view of a C-ordered array
        return np.array(host.T, order="C").T
    if layout == "reversed":  # negative strides
        return np.array(host[::-1])[::-1]
    wide = list(host.shape)
    axis = 1 if layout == "columns" else 0
    wide[axis] *= 2
    big = np.full(wide, np.nan, dtype=host.dtype)
    index = (slice(None),) * axis + (slice(None, None, 2),)
    big[index] = host
    return big[index]


def _arrays(case: Case, hosts: list) -> list:
    return [_laid_out(h, layout) for h, (_, _, layout) in zip(hosts, case.inputs, strict=True)]


def _layout(array) -> tuple:
    """Strides, a size-1 axis's as 0 (it steps nowhere)."""
    return tuple(0 if n == 1 else s for n, s in zip(array.shape, array.strides, strict=True))


def _assert_same(got: list, want: list, case: Case) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        where = f"output {i} of {case!r}"
        assert type(g) is type(w), where
        assert g.dtype == w.dtype and g.shape == w.shape, where
        assert np.ascontiguousarray(g).tobytes() == np.ascontiguousarray(w).tobytes(), f"{where}\n{g!r}\n{w!r}"
        if isinstance(w, np.ndarray):  # a later reduction adds in memory order
            assert _layout(g) == _layout(w), where


@settings(derandomize=True, max_examples=1500, deadline=None)
@given(cases())
def test_a_random_program_optimized_gives_the_recorded_programs_bits(case):
    """Recorded on one set of values, both programs run on another of the same layouts, each on
    arrays of its own; the optimized one twice (a constant it wrote into would show). A donated
    input is never returned, and may be written into; the others must keep their bits."""
    f = _function(case)
    with np.errstate(all="ignore"):
        program, _ = trace(f, _arrays(case, _host(case, case.seeds[0])))
        optimized = Program(opt.optimize(program.trace, BACKENDS["numpy"].fast_path(), donated=case.donated))
        hosts = _host(case, case.seeds[1])
        want = program(*_arrays(case, hosts))
        for _ in range(2):
            inputs = _arrays(case, hosts)
            got = optimized(*inputs)
            _assert_same(got, want, case)
            for i, (array, host) in enumerate(zip(inputs, hosts, strict=True)):
                if i not in case.donated:
                    assert np.ascontiguousarray(array).tobytes() == host.tobytes(), f"input {i} changed: {case!r}"


# --- known failures: each pattern is left out of the random programs above ---


def _recorded_and_optimized(f, inputs: list) -> tuple:
    program, _ = trace(f, inputs)
    optimized = Program(opt.optimize(program.trace, BACKENDS["numpy"].fast_path()))
    with np.errstate(all="ignore"):
        return program(*[x.copy() for x in inputs]), optimized(*[x.copy() for x in inputs])


def test_reuse_buffers_keeps_the_operands_order_of_an_addition():
    """`a + v` (v a temporary that dies there) must stay `add(a, v, out=v)`: where both elements
    are NaN, NumPy's add gives its first operand's NaN, so `v += a` has other sign bits."""

    def f(a, b):
        v = b * 1.0
        return [a + v]

    want, got = _recorded_and_optimized(f, [np.full(16, np.nan), np.full(16, -np.nan)])
    assert got[0].view(np.uint64).tolist() == want[0].view(np.uint64).tolist()


def test_eliminate_common_keeps_a_matmul_of_two_equal_values_a_gemm():
    """Two equal temporaries merged into one array: NumPy computes `x @ x.T` with syrk, whose
    float32 sums round otherwise than gemm's for `x @ y.T` (OpenBLAS, at any number of threads)."""

    def f(a):
        x, y = a * 2.0, a * 2.0
        return [x @ y.T]

    want, got = _recorded_and_optimized(f, [np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)])
    assert got[0].tobytes() == want[0].tobytes()
