"""`model.summary()`: one row per layer with its output shape and parameter count, then the totals,
the dtype and the backend (as Keras's `Model.summary`).

>>> import backprop as bp
>>> model = bp.nn.mlp([784, 30, 10], "sigmoid")
>>> model.summary()
Sequential on numpy (device cpu), float32
layer         type       output shape     parameters
--------------------------------------------------
0             Linear     (batch, 30)          23,550
1             Sigmoid    (batch, 30)               0
2             Linear     (batch, 10)             310
--------------------------------------------------
total parameters: 23,860 (trainable 23,860, frozen 0), 95.4 kB
>>> model.count_parameters()
23860
"""

from __future__ import annotations

import math

import numpy as np

from backprop.backend import dtype_name
from backprop.backends import backend_of
from backprop.errors import ConfigError
from backprop.nn import evaluating
from backprop.tensor import Tensor, no_grad


def leaves(module, name: str = ""):
    """(name, module) for each module without sub-modules, in forward order for a Sequential."""
    children = list(module.children())
    if not children:
        yield name or type(module).__name__, module
    for child, sub in children:
        yield from leaves(sub, f"{name}.{child}" if name else child)


def input_features(layers) -> int | None:
    """The input width of a model whose first layer with weights is a Linear, else None."""
    for _, module in layers:
        if getattr(module, "in_features", None) is not None:
            return module.in_features
        if module.parameters():
            return None
    return None


@no_grad()
def _output_shapes(model, layers, input_shape) -> dict:
    """{id(layer): output shape} from a forward pass, layer by layer, over one zero sample (eval mode,
    so nothing random is drawn); empty when the model is not a chain of layers or has no input shape."""
    first = next(iter(model.parameters()), None)
    if input_shape is None or first is None or not all(_is_chain(m) for _, m in model.named_modules()):
        return {}
    x = Tensor(first.xp.zeros((1, *input_shape), dtype=first.data.dtype, device=first.device))
    shapes = {}
    with evaluating(model):
        try:
            for _, layer in layers:
                x = layer(x)
                shapes[id(layer)] = tuple(x.shape[1:])
        except Exception as error:  # a layer that does not take the previous one's output (any backend's error)
            raise ConfigError(f"summary: input_shape {tuple(input_shape)} does not fit the model: {error}") from None
    return shapes


def _is_chain(module) -> bool:
    """Whether `module` runs its sub-modules one after the other (a Sequential, or a leaf)."""
    from backprop.nn import Sequential

    return isinstance(module, Sequential) or not list(module.children())


def summary_lines(model, input_shape=None) -> list[str]:
    """The lines `Module.summary` prints."""
    layers = list(leaves(model))
    if input_shape is None:
        features = input_features(layers)
        input_shape = None if features is None else (features,)
    shapes = _output_shapes(model, layers, input_shape)
    params = model.parameters()
    first = params[0] if params else None
    dtypes = ", ".join(sorted({dtype_name(p.dtype) for p in params}))
    where = f" on {backend_of(first.xp).name} (device {first.device}), {dtypes}" if first is not None else ""
    rule = "-" * 50
    lines = [
        f"{type(model).__name__}{where}",
        f"{'layer':13} {'type':10} {'output shape':16} {'parameters':>10}",
        rule,
    ]
    for name, leaf in layers:
        shape = shapes.get(id(leaf))
        shown = "(batch, " + ", ".join(map(str, shape)) + ")" if shape is not None else "?"
        count = sum(math.prod(p.shape) for p in leaf.parameters())
        lines.append(f"{name:13} {type(leaf).__name__:10} {shown:16} {count:>10,}")
    total = model.count_parameters()
    trainable = model.count_parameters(trainable_only=True)
    size = sum(math.prod(p.shape) * _itemsize(p.dtype) for p in params)
    lines += [
        rule,
        f"total parameters: {total:,} (trainable {trainable:,}, frozen {total - trainable:,}), {_bytes(size)}",
    ]
    return lines


def _itemsize(dtype) -> int:
    try:
        return np.dtype(dtype_name(dtype)).itemsize
    except TypeError:  # a dtype NumPy lacks (bfloat16): its width is in its name
        return int("".join(filter(str.isdigit, dtype_name(dtype))) or 32) // 8


def _bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
