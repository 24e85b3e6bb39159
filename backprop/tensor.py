"""Tensor and the graph: a node is a tensor with parents and a backward function.

Backward walks the graph iteratively (no recursion limit), frees it as it goes unless asked to
retain it, and no node points back at its own output, so a graph dies without the cycle collector.

>>> import backprop as bp
>>> x = bp.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
>>> (x * x).sum().backward()
>>> bp.to_numpy(x.grad).tolist()
[[2.0, 4.0], [6.0, 8.0]]
"""

from __future__ import annotations

import contextvars
import functools
import itertools
from heapq import heappop, heappush
from operator import attrgetter

from array_api_compat import device, is_array_api_obj

from backprop.backend import backend_name, copy_array, get_backend, namespace_of, to_numpy
from backprop.backends import backend_of

_grad_enabled = contextvars.ContextVar("backprop_grad_enabled", default=True)
_sequence = itertools.count()  # creation order of graph nodes: parents always come before children


class Tensor:
    """An array of any array-API backend, plus what autodiff needs.

    `data` is the backend array; `grad` (after `backward`) is a backend array of the same shape.
    """

    __slots__ = (
        *("data", "grad", "requires_grad", "xp"),
        *("_parents", "_needs", "_backward", "_sequence", "_written", "__weakref__"),  # the graph's
    )
    __array_priority__ = 1000  # NumPy defers `ndarray + Tensor` to Tensor.__radd__

    def __init__(self, data, requires_grad: bool = False):
        if isinstance(data, Tensor):
            data = data.data
        elif not is_array_api_obj(data):
            backend = get_backend()
            data = backend.asarray(data, dtype=backend.float_dtype if _is_float_data(data) else None)
        self.xp = namespace_of(data)
        self.data = backend_of(self.xp).untracked(data)
        self.grad = None
        self._parents = ()
        self._backward = None
        self._written = 0  # when the library last wrote into `data` in place (see `mark_written`)
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_()

    def requires_grad_(self, flag: bool = True) -> Tensor:
        """Mark a leaf as needing a gradient (floating-point tensors only)."""
        if flag and not self.xp.isdtype(self.data.dtype, "real floating"):
            raise TypeError(f"only floating-point tensors can require gradients, not {self.data.dtype}")
        self.requires_grad = flag
        return self

    # --- what the array is ---
    shape = property(lambda self: tuple(self.data.shape))
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: _size(self.data.shape))
    device = property(lambda self: device(self.data))
    is_leaf = property(lambda self: self._backward is None)

    def __len__(self) -> int:
        return self.data.shape[0]

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({to_numpy(self.data)!r}, backend={backend_name(self.xp)}{grad})"

    def numpy(self):
        """A host NumPy array with this tensor's values (a copy off the GPU)."""
        return to_numpy(self.data)

    def item(self) -> float:
        """The value of a one-element tensor as a Python number (a device sync on a GPU)."""
        if _size(self.data.shape) != 1:
            raise ValueError(f"item() needs a tensor with one element, not shape {self.shape}")
        return to_numpy(self.data).reshape(()).item()

    def detach(self) -> Tensor:
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into the `.grad` of every leaf that requires a gradient.

        `grad` is the upstream gradient (default: 1 for a one-element tensor).
        """
        leaves, grads = _backpropagate(self, grad, retain_graph, wanted=())
        _hand_over(grads, leaves.values(), grad)
        for key, leaf in leaves.items():  # every leaf reached has a gradient
            leaf.grad = grads[key] if leaf.grad is None else leaf.grad + grads[key]


def _hand_over(grads: dict, tensors, given) -> None:
    """Make the gradients in `grads` of `tensors` safe to hand to users: each its own writable
    array (an op's backward may give two inputs one array or views of one, or a read-only
    broadcast view; `given` is the caller's upstream gradient, never handed back)."""
    seen = memory_of = None
    for tensor in tensors:
        g = grads.get(id(tensor))
        if g is None:
            continue
        if memory_of is None:
            memory_of = backend_of(tensor.xp).writable_memory
            given = given.data if isinstance(given, Tensor) else given
            seen = {memory_of(given)} if given is not None else set()
        memory = memory_of(g)
        if memory is None or memory in seen:
            grads[id(tensor)] = g = copy_array(g)
            memory = memory_of(g)
        seen.add(memory)


def _is_float_data(data) -> bool:
    """Python data with a float in it (a nested list or a scalar) becomes the default float dtype."""
    while isinstance(data, (list, tuple)) and data:
        data = data[0]
    return isinstance(data, float)


def _size(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


_requires_grad = attrgetter("requires_grad")


_LINEAR_BACKWARDS = frozenset({"backprop.ops", "backprop.losses"})  # where backward functions are linear in g
_unscaled = 0  # nodes made so far whose gradients may not scale with their upstream gradient


def note_unscaled() -> None:
    """Record a node whose gradients may not scale with its upstream gradient: one whose backward
    is not backprop's own (a custom op may clip `g`), or that computes in float16 (scaled-down
    gradients could underflow). A step then does not start backward from the learning rate."""
    global _unscaled
    _unscaled += 1


def unscaled_nodes() -> int:
    """How many nodes `note_unscaled` has recorded so far (compare two readings)."""
    return _unscaled


def result(data, xp, parents: tuple, backward) -> Tensor:
    """The output of an op: a graph node when a gradient is needed, a plain tensor otherwise.

    `backward(g, needs)` gets the upstream gradient and one flag per parent (did it need a
    gradient when the node was made?) and returns one gradient (or None) per parent, possibly at
    the broadcast shape. It must never refer to the output tensor itself (a reference cycle).
    A backward defined outside backprop is not assumed linear in `g` (see `note_unscaled`).
    """
    out = Tensor.__new__(Tensor)
    out.data = data
    out.xp = xp
    out.grad = None
    out.requires_grad = False
    out._parents = ()
    out._backward = None
    out._written = 0
    if _grad_enabled.get():
        needs = tuple(map(_requires_grad, parents))
        if True in needs:
            out.requires_grad = True
            out._parents, out._needs, out._backward = parents, needs, backward
            out._sequence = next(_sequence)
            if getattr(backward, "__module__", None) not in _LINEAR_BACKWARDS:
                note_unscaled()
    return out


def unbroadcast(xp, grad, shape):
    """Sum `grad` down to `shape`: over the leading axes broadcasting added and the size-1 axes
    it stretched. The one place gradients are un-broadcast."""
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1 and grad.shape[lead + i] != 1)
    if axes:
        grad = xp.sum(grad, axis=axes, keepdims=True)
    return xp.reshape(grad, shape)


def _graph_freed(grad, needs):
    raise RuntimeError(
        "backward through a graph that was already freed: pass retain_graph=True to the first backward()"
    )


def _root_gradient(root: Tensor, grad):
    """The upstream gradient of `root` as a backend array: `grad`, checked, or 1 for one element."""
    if not root.requires_grad:
        raise RuntimeError("backward() on a tensor that does not require a gradient (no input requires one)")
    data = root.data
    if grad is None:
        if _size(data.shape) != 1:
            raise RuntimeError(f"backward() without a gradient needs a one-element output, not shape {root.shape}")
        grad = root.xp.asarray(1.0, dtype=data.dtype, device=device(data))
        return root.xp.reshape(grad, data.shape) if data.ndim else grad
    grad = grad.data if isinstance(grad, Tensor) else backend_of(root.xp).untracked(grad)
    if tuple(grad.shape) != tuple(data.shape):
        raise ValueError(f"gradient of shape {tuple(grad.shape)} given for an output of shape {root.shape}")
    return grad


def _backpropagate(root: Tensor, grad, retain_graph: bool, wanted):
    """Run backward from `root`; return (leaves by id, gradients by id of leaves and `wanted`).

    The nodes reached so far wait in a heap, newest first: every node is newer than its parents
    (creation order is a topological order), so a node is taken only after every node that feeds
    it a gradient, in one pass without sorting the graph. A node that is the only one waiting is
    taken next without the heap (a chain of layers).
    """
    grad = _root_gradient(root, grad)
    if root._backward is None:
        return {id(root): root}, {id(root): grad}
    grads, kept, leaves = {id(root): grad}, {}, {}
    waiting, node = [], root  # the id in a heap entry breaks ties (copy.copy of a node)
    while True:
        g = grads.pop(id(node))  # popped, so an intermediate tensor can go as soon as it is done
        if wanted and id(node) in wanted:
            kept[id(node)] = g
        parents, needs, sequence = node._parents, node._needs, node._sequence
        try:
            parent_grads = node._backward(g, needs)
        except TypeError as error:
            _check_backward_signature(node._backward, error)
            raise
        if parent_grads.__class__ is not tuple:
            parent_grads = tuple(parent_grads)
        if len(parent_grads) != len(parents):
            raise RuntimeError(
                f"the backward of {node._backward.__qualname__} returned {len(parent_grads)} gradients "
                f"for {len(parents)} inputs"
            )
        reached = None  # the first parent reached for the first time (any more go to the heap)
        for parent, pg, need in zip(parents, parent_grads, needs, strict=False):  # lengths checked above
            if parent._written > sequence:
                _modified_in_place(node, parent)
            if pg is None or not need:
                continue
            if pg.shape != parent.data.shape:
                pg = unbroadcast(node.xp, pg, tuple(parent.data.shape))
            key = id(parent)
            if key in grads:
                grads[key] = grads[key] + pg
            elif parent._backward is None:
                grads[key], leaves[key] = pg, parent
            else:
                grads[key] = pg
                if reached is None:
                    reached = parent
                else:
                    heappush(waiting, (-parent._sequence, key, parent))
        if not retain_graph:
            node._parents, node._needs = (), ()
            node._backward = _graph_freed
        if reached is not None:
            if not waiting:  # a chain: the one node waiting is next, without the heap
                node = reached
                continue
            heappush(waiting, (-reached._sequence, id(reached), reached))
        if not waiting:
            break
        node = heappop(waiting)[2]
    grads.update(kept)
    return leaves, grads


def leaf_gradients(root: Tensor, leaves: list, upstream=None, hand_over: bool = True) -> list:
    """The gradients of `root` for each of `leaves` (None where it does not depend on one), from
    the upstream gradient `upstream` (default 1), freeing the graph; no `.grad` is touched, and
    no other tensor gets one. With `hand_over`, each is its own writable array (as `backward`
    gives); without, they are backward's own: two leaves may get one array, or a read-only view,
    for a caller that only reads them (a step that subtracts them as they come)."""
    return _gradients(root, leaves, upstream, False, (), hand_over)  # a leaf's gradient is kept anyway


def _gradients(root: Tensor, tensors: list, upstream, retain_graph: bool, wanted, hand_over: bool) -> list:
    _, grads = _backpropagate(root, upstream, retain_graph, wanted)
    if hand_over:
        _hand_over(grads, tensors, upstream)
    return [grads.get(id(t)) for t in tensors]


def mark_written(tensors) -> None:
    """Record that the library wrote into these tensors' arrays in place (an optimizer step): a
    graph built before that can no longer give their gradients, and backward says so."""
    stamp = next(_sequence)
    for tensor in tensors:
        tensor._written = stamp


def _modified_in_place(node: Tensor, parent: Tensor) -> None:
    raise RuntimeError(
        f"an input of {node._backward.__qualname__.split('.')[0]} (shape {parent.shape}) was changed in place "
        "after the forward pass (an optimizer step?): its gradient would be wrong. Run the forward pass "
        "again, or step the optimizer after backward()"
    )


def _check_backward_signature(backward, error: TypeError) -> None:
    """A backward written as `backward(g)` (before `needs` was passed): say so, not just the TypeError."""
    import inspect

    try:
        arguments = inspect.signature(backward).bind(None, None)
    except (TypeError, ValueError):
        raise TypeError(
            f"the backward of {backward.__qualname__} must take (g, needs): the upstream gradient and one "
            "flag per input saying whether it needs a gradient"
        ) from error
    del arguments


def grad(output: Tensor, inputs, grad_output=None, retain_graph: bool = False):
    """d(output)/d(inputs) as backend arrays, without touching any `.grad`.

    An input that the output does not depend on gets zeros.

    >>> import backprop as bp
    >>> x = bp.tensor([1.0, 2.0, 3.0], requires_grad=True)
    >>> (gx,) = bp.grad((x ** 2).sum(), [x])
    >>> bp.to_numpy(gx).tolist()
    [2.0, 4.0, 6.0]
    """
    inputs = list(inputs)
    found = _gradients(output, inputs, grad_output, retain_graph, {id(t) for t in inputs}, hand_over=True)
    return [t.xp.zeros_like(t.data) if g is None else g for g, t in zip(found, inputs, strict=True)]


class no_grad:
    """Context manager and decorator: ops inside build no graph.

    >>> import backprop as bp
    >>> w = bp.tensor([1.0], requires_grad=True)
    >>> with bp.no_grad():
    ...     (w * 2).requires_grad
    False
    """

    def __enter__(self):
        self._token = _grad_enabled.set(False)

    def __exit__(self, *exc):
        _grad_enabled.reset(self._token)

    def __call__(self, function):
        @functools.wraps(function)  # help() shows the function's own signature and docstring
        def wrapper(*args, **kwargs):
            with no_grad():
                return function(*args, **kwargs)

        return wrapper


def is_grad_enabled() -> bool:
    return _grad_enabled.get()


# The ops attach themselves to Tensor (methods, operators) as they are registered: importing them
# here means a Tensor has all its methods whichever module is imported first.
from backprop import ops  # noqa: E402, F401
