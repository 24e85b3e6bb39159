"""Every differentiable op, registered once: its forward and, right beside it, its gradient.

An op is a function decorated with `@op(...)`, which makes it `bp.<name>`, attaches the Tensor
methods and operators it names, and lists it in OPS (the gradient-check coverage test demands a
case for each). Each op takes the namespace `xp` of its inputs and uses only the array API
standard; what the standard lacks (scatter-add, writes into immutable arrays) it asks the backend
entry for. A backward function receives the upstream gradient `g` and `needs`, one flag per parent
saying whether that parent needs a gradient, and returns one gradient (or None) per parent;
gradients of broadcasting ops may come back at the broadcast shape (the engine un-broadcasts them
once). Backward closures capture arrays only, never the output tensor.

>>> import backprop as bp
>>> x = bp.tensor([[1.0, -2.0, 3.0]], requires_grad=True)
>>> y = bp.softmax(x, axis=-1).sum()
>>> round(y.item(), 6)
1.0
"""

from __future__ import annotations

import operator
import sys
from numbers import Number

from backprop.backend import backend_name
from backprop.backends import backend_of
from backprop.tensor import Tensor, note_unscaled, result

OPS: dict = {}  # name -> function: every public differentiable op, in registration order

# reflected operators: `2 * t` calls t.__rmul__(2), which is mul(2, t)
_BINARY = ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift", "rshift")
_REFLECTED = {f"__r{name}__" for name in _BINARY}


def op(*methods: str, **attributes):
    """Register a differentiable op: `bp.<name>`, the Tensor methods and operators named in
    `methods` (a reflected operator such as `__radd__` swaps the operands), and other Tensor
    attributes given by keyword (method adapters, properties).

    >>> import backprop as bp
    >>> from backprop.tensor import result
    >>> @bp.op("cube")
    ... def cube(x):
    ...     out = x.data * x.data * x.data
    ...     return result(out, x.xp, (x,), lambda g, needs: (3 * g * x.data * x.data,))
    >>> x = bp.tensor([2.0], dtype="float64", requires_grad=True)
    >>> x.cube().backward()
    >>> bp.cube is cube, x.grad.tolist(), bp.gradcheck(cube, x)
    (True, [12.0], True)
    >>> bp.ops.unregister("cube")
    """

    def register(function):
        name = function.__name__
        if name in OPS:
            raise ValueError(f"an op named {name!r} is already registered")
        package = sys.modules.get("backprop")  # during backprop's own import: the module being built
        if package is not None and hasattr(package, name):
            raise ValueError(f"op {name!r}: backprop already has an attribute {name!r}")
        attached = {m: (_reflected(function) if m in _REFLECTED else function) for m in methods}
        attached.update(attributes)
        taken = sorted(m for m in attached if hasattr(Tensor, m))
        if taken:
            raise ValueError(f"op {name!r}: Tensor already has {', '.join(taken)}")
        OPS[name] = function
        for attribute, value in attached.items():
            setattr(Tensor, attribute, value)
        if package is not None:
            setattr(package, name, function)
        _ATTACHED[name] = tuple(attached)
        return function

    return register


_ATTACHED: dict = {}  # op name -> the Tensor attributes it attached


def unregister(name: str) -> None:
    """Remove an op registered with `op` (its export and Tensor attributes): for tests and experiments."""
    if name not in OPS:
        raise ValueError(f"no op named {name!r} is registered")
    del OPS[name]
    for attribute in _ATTACHED.pop(name):
        delattr(Tensor, attribute)
    package = sys.modules.get("backprop")
    if package is not None and name in vars(package):
        delattr(package, name)


def _reflected(function):
    return lambda self, other: function(other, self)


def _constant(value, like: Tensor) -> Tensor:
    """A Python scalar (or raw backend array) as a constant tensor; a scalar takes `like`'s dtype."""
    if isinstance(value, Tensor):
        return value
    xp = like.xp
    if isinstance(value, Number):
        floating = xp.isdtype(like.data.dtype, "real floating")
        dtype = like.data.dtype if floating or isinstance(value, int) else None
        return Tensor(xp.asarray(value, dtype=dtype, device=like.device))
    return Tensor(value)


def _namespace(*tensors: Tensor):
    """The one namespace of `tensors` (mixing backends is an error that names both)."""
    xp = tensors[0].xp
    for t in tensors[1:]:
        if t is not None and t.xp is not xp:
            names = backend_name(xp), backend_name(t.xp)
            if names[0] == names[1]:  # one backend, two namespaces: a trace's stand-ins and a real array
                raise TypeError(
                    f"cannot mix two namespaces of {names[0]}: the arrays a captured step traces (parameters, "
                    "optimizer state, the batch) and an array from outside them"
                )
            raise TypeError(f"cannot mix arrays of two backends ({' and '.join(names)}): create both on one backend")
    return xp


def _pair(a, b):
    """Both operands as tensors of one namespace."""
    if not isinstance(a, Tensor):
        a = _constant(a, b)
    elif not isinstance(b, Tensor):
        b = _constant(b, a)
    return a, b, _namespace(a, b)


def _axes(axis, ndim: int) -> tuple:
    """`axis` (None, int or tuple) as a tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axis = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(a % ndim for a in axis)


def _keepdims_shape(shape, axes) -> tuple:
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


def _expand(xp, g, shape, axes):
    """A gradient of a reduction over `axes`, stretched back to the input's `shape`."""
    return xp.broadcast_to(xp.reshape(g, _keepdims_shape(shape, axes)), shape)


# --- arithmetic ---


@op("__add__", "__radd__")
def add(a, b) -> Tensor:
    a, b, xp = _pair(a, b)
    return result(a.data + b.data, xp, (a, b), lambda g, needs: (g, g))


@op("__sub__", "__rsub__")
def sub(a, b) -> Tensor:
    a, b, xp = _pair(a, b)
    return result(a.data - b.data, xp, (a, b), lambda g, needs: (g, -g if needs[1] else None))


@op("__mul__", "__rmul__")
def mul(a, b) -> Tensor:
    a, b, xp = _pair(a, b)
    A, B = a.data, b.data
    return result(A * B, xp, (a, b), lambda g, needs: (g * B if needs[0] else None, g * A if needs[1] else None))


@op("__truediv__", "__rtruediv__")
def div(a, b) -> Tensor:
    a, b, xp = _pair(a, b)
    A, B = a.data, b.data
    out = A / B
    return result(out, xp, (a, b), lambda g, needs: (g / B if needs[0] else None, -g * out / B if needs[1] else None))


@op("__pow__", "__rpow__")
def pow(a, b) -> Tensor:
    """`a ** b`; the exponent's gradient is `out * log(a)`."""
    a, b, xp = _pair(a, b)
    A, B = a.data, b.data
    out = A**B

    def backward(g, needs):
        ga = g * B * A ** (B - 1) if needs[0] else None
        return ga, (g * out * xp.log(A) if needs[1] else None)

    return result(out, xp, (a, b), backward)


@op("__neg__")
def neg(x: Tensor) -> Tensor:
    return result(-x.data, x.xp, (x,), lambda g, needs: (-g,))


@op("__matmul__", "__rmatmul__")
def matmul(a, b) -> Tensor:
    """Matrix product with NumPy's rules: 2-D, batched (broadcast) and 1-D operands."""
    a, b, xp = _pair(a, b)
    A, B = a.data, b.data

    def backward(g, needs):
        # treat a 1-D operand as a matrix with one row (a) or one column (b), then drop that axis
        A2 = A if A.ndim > 1 else xp.expand_dims(A, axis=0)
        B2 = B if B.ndim > 1 else xp.expand_dims(B, axis=1)
        g2 = g if B.ndim > 1 else xp.expand_dims(g, axis=-1)
        g2 = g2 if A.ndim > 1 else xp.expand_dims(g2, axis=-2)
        ga = g2 @ xp.matrix_transpose(B2) if needs[0] else None  # not `.mT`: CuPy has it only from 14
        gb = xp.matrix_transpose(A2) @ g2 if needs[1] else None
        if ga is not None and A.ndim == 1:
            ga = xp.squeeze(ga, axis=-2)
        if gb is not None and B.ndim == 1:
            gb = xp.squeeze(gb, axis=-1)
        return ga, gb

    return result(A @ B, xp, (a, b), backward)


@op()
def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None) -> Tensor:
    """`activation(x @ weight + bias)` as one node (rows of `x` are samples; `weight` is in x out).

    `activation` is None or a name in OUTPUT_DERIVATIVES ("sigmoid", "tanh", "relu"): fusing it
    saves a node per layer, which is most of the cost at small batches. The input's gradient (a
    product as large as the weight's) is computed only when `x` needs one: a first layer's input
    is data.
    """
    xp = x.xp
    if weight.xp is not xp or (bias is not None and bias.xp is not xp):  # one backend: no call needed
        _namespace(x, weight, bias)
    X, W = x.data, weight.data
    if X.ndim != 2 or W.ndim != 2 or X.shape[1] != W.shape[0]:
        raise ValueError(f"linear: input of shape {x.shape} does not fit a weight of shape {weight.shape}")
    out = X @ W if bias is None else X @ W + bias.data
    if activation is not None:
        forward, derivative = OUTPUT_DERIVATIVES[activation]
        out = forward(xp, out)

    def backward(g, needs):
        if activation is not None:
            g = g * derivative(xp, out)
        gx = g @ W.T if needs[0] else None  # 2-D: `.T` (every library has it; `.mT` CuPy only from 14)
        gw = X.T @ g if needs[1] else None
        if bias is None:
            return gx, gw
        return gx, gw, (xp.sum(g, axis=0) if needs[2] else None)

    return result(out, xp, (x, weight) if bias is None else (x, weight, bias), backward)


# --- shape ---


@op("permute", T=property(lambda self: permute(self, tuple(range(self.ndim))[::-1])))
def permute(x: Tensor, axes) -> Tensor:
    axes = tuple(a % x.ndim for a in axes)
    inverse = tuple(sorted(range(len(axes)), key=axes.__getitem__))
    xp = x.xp
    return result(xp.permute_dims(x.data, axes), xp, (x,), lambda g, needs: (xp.permute_dims(g, inverse),))


@op("transpose", mT=property(lambda self: transpose(self, -2, -1)))
def transpose(x: Tensor, axis0: int = -2, axis1: int = -1) -> Tensor:
    axes = list(range(x.ndim))
    axes[axis0], axes[axis1] = axes[axis1], axes[axis0]
    return permute(x, axes)


def _shape_arguments(shape):
    """`t.reshape(2, 3)` and `t.reshape((2, 3))` alike."""
    return shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape


@op(reshape=lambda self, *shape: reshape(self, _shape_arguments(shape)))
def reshape(x: Tensor, shape) -> Tensor:
    xp, old = x.xp, x.shape
    return result(xp.reshape(x.data, tuple(shape)), xp, (x,), lambda g, needs: (xp.reshape(g, old),))


@op("broadcast_to")
def broadcast_to(x: Tensor, shape) -> Tensor:
    xp = x.xp
    return result(xp.broadcast_to(x.data, tuple(shape)), xp, (x,), lambda g, needs: (g,))


# --- reductions ---


@op("sum")
def sum(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    xp, shape = x.xp, x.shape
    axes = _axes(axis, x.ndim)
    out = xp.sum(x.data, axis=axes, keepdims=keepdims)
    return result(out, xp, (x,), lambda g, needs: (_expand(xp, g, shape, axes),))


@op("mean")
def mean(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    xp, shape = x.xp, x.shape
    axes = _axes(axis, x.ndim)
    count = 1
    for a in axes:
        count *= shape[a]
    out = xp.mean(x.data, axis=axes, keepdims=keepdims)
    return result(out, xp, (x,), lambda g, needs: (_expand(xp, g / count, shape, axes),))


@op("max")
def max(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """Maximum; where several elements tie, the gradient is shared equally among them."""
    xp, X = x.xp, x.data
    axes = _axes(axis, x.ndim)
    top = xp.max(X, axis=axes, keepdims=True)

    def backward(g, needs):
        winners = xp.astype(X == top, X.dtype)
        share = winners / xp.sum(winners, axis=axes, keepdims=True)
        return (_expand(xp, g, X.shape, axes) * share,)

    out = top if keepdims else xp.reshape(top, tuple(n for i, n in enumerate(X.shape) if i not in axes))
    return result(out, xp, (x,), backward)


@op("logsumexp")
def logsumexp(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """log(sum(exp(x))), computed stably by shifting by the maximum."""
    xp, X = x.xp, x.data
    axes = _axes(axis, x.ndim)
    top = xp.max(X, axis=axes, keepdims=True)
    lse = xp.log(xp.sum(xp.exp(X - top), axis=axes, keepdims=True)) + top

    def backward(g, needs):
        return (_expand(xp, g, X.shape, axes) * xp.exp(X - lse),)

    out = lse if keepdims else xp.reshape(lse, tuple(n for i, n in enumerate(X.shape) if i not in axes))
    return result(out, xp, (x,), backward)


# --- elementwise functions (most save their output: that is all their gradient needs) ---


@op("exp")
def exp(x: Tensor) -> Tensor:
    out = x.xp.exp(x.data)
    return result(out, x.xp, (x,), lambda g, needs: (g * out,))


@op("log")
def log(x: Tensor) -> Tensor:
    X = x.data
    return result(x.xp.log(X), x.xp, (x,), lambda g, needs: (g / X,))


@op("sqrt")
def sqrt(x: Tensor) -> Tensor:
    out = x.xp.sqrt(x.data)
    return result(out, x.xp, (x,), lambda g, needs: (g / (2 * out),))


@op("abs", "__abs__")
def abs(x: Tensor) -> Tensor:
    X, xp = x.data, x.xp
    entry = backend_of(xp)  # the library's own sign: array-api-compat's for CuPy waits for the device
    return result(xp.abs(X), xp, (x,), lambda g, needs: (g * entry.sign(X),))


# Activations whose derivative is a function of their output: (forward(xp, x), derivative(xp, out)).
# The standalone ops below and linear(..., activation=...) both use these.
OUTPUT_DERIVATIVES = {
    # 1 / (1 + exp(-x)) computed as (1 + tanh(x/2)) / 2: no overflow for any x, few passes
    "sigmoid": (lambda xp, x: xp.tanh(x * 0.5) * 0.5 + 0.5, lambda xp, out: out * (1 - out)),
    "tanh": (lambda xp, x: xp.tanh(x), lambda xp, out: 1 - out * out),
    # maximum and a 0/1 mask: `where` with a scalar is several times slower in NumPy
    "relu": (lambda xp, x: xp.maximum(x, 0.0), lambda xp, out: xp.astype(out > 0, out.dtype)),
}


def _output_derivative_op(name: str):
    """The op `name` of OUTPUT_DERIVATIVES, registered with its Tensor method."""
    forward, derivative = OUTPUT_DERIVATIVES[name]

    def activation(x: Tensor) -> Tensor:
        xp = x.xp
        out = forward(xp, x.data)
        return result(out, xp, (x,), lambda g, needs: (g * derivative(xp, out),))

    activation.__name__ = activation.__qualname__ = name
    activation.__doc__ = f"Elementwise {name}; its gradient is computed from its output."
    return op(name)(activation)


sigmoid = _output_derivative_op("sigmoid")
tanh = _output_derivative_op("tanh")
relu = _output_derivative_op("relu")


@op("leaky_relu")
def leaky_relu(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    xp, X = x.xp, x.data
    positive = X > 0
    out = xp.where(positive, X, negative_slope * X)
    return result(out, xp, (x,), lambda g, needs: (xp.where(positive, g, negative_slope * g),))


@op("softmax")
def softmax(x: Tensor, axis: int = -1) -> Tensor:
    xp, X = x.xp, x.data
    e = xp.exp(X - xp.max(X, axis=axis, keepdims=True))
    out = e / xp.sum(e, axis=axis, keepdims=True)
    return result(out, xp, (x,), lambda g, needs: (out * (g - xp.sum(g * out, axis=axis, keepdims=True)),))


@op("log_softmax")
def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    xp, X = x.xp, x.data
    shifted = X - xp.max(X, axis=axis, keepdims=True)
    out = shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))
    return result(out, xp, (x,), lambda g, needs: (g - xp.exp(out) * xp.sum(g, axis=axis, keepdims=True),))


def _winner_share(xp, wins, ties, dtype):
    """1 where the first operand wins, 1/2 on a tie, 0 where it loses."""
    return xp.astype(wins, dtype) + 0.5 * xp.astype(ties, dtype)


def _shared(share):
    """The backward of an op whose first operand gets `share` of the gradient, the second the rest."""
    return lambda g, needs: (g * share if needs[0] else None, g * (1 - share) if needs[1] else None)


@op()
def maximum(a, b) -> Tensor:
    """Elementwise maximum; a tie splits the gradient half and half."""
    a, b, xp = _pair(a, b)
    A, B = a.data, b.data
    return result(xp.maximum(A, B), xp, (a, b), _shared(_winner_share(xp, A > B, A == B, A.dtype)))


@op()
def minimum(a, b) -> Tensor:
    """Elementwise minimum; a tie splits the gradient half and half."""
    a, b, xp = _pair(a, b)
    A, B = a.data, b.data
    return result(xp.minimum(A, B), xp, (a, b), _shared(_winner_share(xp, A < B, A == B, A.dtype)))


@op()
def where(condition, a, b) -> Tensor:
    """`a` where `condition` holds, else `b` (the condition gets no gradient)."""
    a, b, xp = _pair(a, b)
    cond = condition.data if isinstance(condition, Tensor) else condition
    out = xp.where(cond, a.data, b.data)

    def backward(g, needs):
        return xp.where(cond, g, 0.0) if needs[0] else None, xp.where(cond, 0.0, g) if needs[1] else None

    return result(out, xp, (a, b), backward)


@op("clip")
def clip(x: Tensor, min=None, max=None) -> Tensor:
    """Clamp to [min, max]; the gradient passes where the input lies inside (bounds included)."""
    if min is None and max is None:
        raise ValueError("clip needs a min or a max bound (or both)")
    xp, X = x.xp, x.data
    inside = xp.ones_like(X, dtype=xp.bool)
    if min is not None:
        inside = inside & (X >= min)
    if max is not None:
        inside = inside & (X <= max)
    return result(clip_array(xp, X, min, max), xp, (x,), lambda g, needs: (xp.where(inside, g, 0.0),))


def clip_array(xp, X, min=None, max=None):
    """`xp.clip` as `minimum(maximum())`: array-api-compat's clip for CuPy indexes with boolean
    masks, which waits for the device and cannot be captured in a CUDA graph."""
    if min is not None:
        X = xp.maximum(X, min)
    return X if max is None else xp.minimum(X, max)


@op("astype")
def astype(x: Tensor, dtype) -> Tensor:
    """A copy in another floating dtype; the gradient comes back in the input's dtype."""
    xp = x.xp
    dtype = getattr(xp, dtype) if isinstance(dtype, str) else dtype
    old = x.dtype
    out = result(xp.astype(x.data, dtype), xp, (x,), lambda g, needs: (xp.astype(g, old),))
    if out.requires_grad and not (xp.isdtype(dtype, "real floating") and xp.finfo(dtype).bits >= 32):
        note_unscaled()  # float16 inside the graph: gradients scaled by a learning rate could underflow
    return out


# --- indexing and joining ---


def _basic_index(key) -> tuple:
    """`key` as a tuple that the standard accepts (it wants an Ellipsis where axes are left out)."""
    key = key if isinstance(key, tuple) else (key,)
    for k in key:
        if not (k is None or k is Ellipsis or isinstance(k, (int, slice))) or isinstance(k, bool):
            raise TypeError(
                f"only basic indexing (integers, slices, ..., None) is supported, not {type(k).__name__}; "
                "use bp.take(x, indices, axis) to pick with an integer array"
            )
    return key if Ellipsis in key else key + (Ellipsis,)


@op("__getitem__")
def getitem(x: Tensor, key) -> Tensor:
    key = _basic_index(key)
    xp, shape, dtype, device = x.xp, x.shape, x.dtype, x.device
    out = x.data[key]
    # the standard allows no None (new axis) when writing: write through the key without them
    write_key = tuple(k for k in key if k is not None)
    write_shape = tuple(x.data[write_key].shape) if len(write_key) < len(key) else None
    entry = backend_of(xp)  # writes in place, or functionally where arrays are immutable

    def backward(g, needs):
        g = g if write_shape is None else xp.reshape(g, write_shape)
        return (entry.set_at(xp.zeros(shape, dtype=dtype, device=device), write_key, g),)

    return result(out, xp, (x,), backward)


@op("take")
def take(x: Tensor, indices, axis: int = 0) -> Tensor:
    """Pick slices along `axis` by an integer array (1-D): a negative index counts from the end, as
    in the standard; repeated indices add their gradients."""
    xp = x.xp
    idx = indices.data if isinstance(indices, Tensor) else indices
    if not hasattr(idx, "shape"):
        idx = xp.asarray(idx, device=x.device)
    if idx.ndim != 1 or not xp.isdtype(idx.dtype, "integral"):
        raise TypeError(f"take needs a 1-D integer index array, got shape {tuple(idx.shape)} and {idx.dtype}")
    if xp.iinfo(idx.dtype).bits < 32:  # JAX counts an int8 -1 from the end of 300 rows in int8
        idx = xp.astype(idx, xp.int32)  # (wrongly), and PyTorch takes only int32 and int64
    axis %= x.ndim
    size = x.shape[axis]
    entry = backend_of(xp)  # the standard has no scatter-add: the backend's, or a one-hot product

    def backward(g, needs):  # a scatter-add takes indices in [0, size) (the one-hot product gives -1
        if xp.isdtype(idx.dtype, "signed integer"):  # a row of zeros): negative ones from the end
            return (entry.scatter_add(g, xp.where(idx < 0, idx + size, idx), axis, size),)
        return (entry.scatter_add(g, idx, axis, size),)

    return result(xp.take(x.data, idx, axis=axis), xp, (x,), backward)


@op()
def concat(tensors, axis: int = 0) -> Tensor:
    tensors = tuple(tensors)
    xp = _namespace(*tensors)
    axis %= tensors[0].ndim
    bounds, start = [], 0
    for t in tensors:
        bounds.append(slice(start, start + t.shape[axis]))
        start += t.shape[axis]
    lead = (slice(None),) * axis

    def backward(g, needs):
        return tuple(g[lead + (s, ...)] if need else None for s, need in zip(bounds, needs, strict=True))

    return result(xp.concat([t.data for t in tensors], axis=axis), xp, tensors, backward)


@op()
def stack(tensors, axis: int = 0) -> Tensor:
    tensors = tuple(tensors)
    xp = _namespace(*tensors)
    axis %= tensors[0].ndim + 1
    lead = (slice(None),) * axis
    out = xp.stack([t.data for t in tensors], axis=axis)
    return result(out, xp, tensors, lambda g, needs: tuple(g[lead + (i, ...)] for i in range(len(tensors))))


# --- comparisons: boolean tensors, outside the graph ---


def _compare(compare):
    return lambda self, other: Tensor(compare(*(t.data for t in _pair(self, other)[:2])))


for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(Tensor, f"__{_name}__", _compare(getattr(operator, _name)))
Tensor.__hash__ = object.__hash__  # comparisons are elementwise; a tensor still hashes by identity
