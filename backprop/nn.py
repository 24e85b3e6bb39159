"""Modules: parameters found by reflection, state dicts, layers, activations, initializers.

A module's parameters and sub-modules are found in its attributes, also inside lists, tuples and
dicts (`self.blocks = [Linear(..), Linear(..)]` names its parameters "blocks.0.weight", ...). A
parameter shared by two layers is one parameter, named by its first path (attributes before
container items); `load_state_dict` accepts it under any of its names.

>>> import backprop as bp
>>> bp.manual_seed(0)
>>> model = bp.nn.Sequential(bp.nn.Linear(4, 3), bp.nn.ReLU(), bp.nn.Linear(3, 2))
>>> [name for name, _ in model.named_parameters()]
['0.weight', '0.bias', '2.weight', '2.bias']
>>> model(bp.randn(5, 4)).shape
(5, 2)
"""

from __future__ import annotations

import contextlib
import math
from itertools import pairwise

import numpy as np
from array_api_compat import is_array_api_obj

from backprop import changes, ops
from backprop.backend import dtype_name, get_backend, host_rng, make_backend, namespace_of, put_back, to_numpy
from backprop.backends import backend_of
from backprop.errors import ConfigError, UserError, a
from backprop.tensor import Tensor


class StateDictError(UserError, KeyError, ValueError):
    """A state dict whose names or shapes do not match the model's parameters."""

    def __str__(self) -> str:  # the message, not KeyError's quoted repr of it
        return str(self.args[0]) if self.args else ""


class Parameter(Tensor):
    """A tensor that a module trains (it requires a gradient)."""

    __slots__ = ()

    def __init__(self, data, requires_grad: bool = True):
        super().__init__(data, requires_grad=requires_grad)


class Module:
    """Base class: subclasses set Parameters and Modules as attributes (or in lists, tuples and
    dicts of them) and define `forward`."""

    training = True
    # Fusion (see Sequential): a layer class that declares `fuses_activation = True` in its own body
    # takes `forward(x, activation=name)`; an activation class that declares `fused_activation`
    # names its entry in ops.OUTPUT_DERIVATIVES. Declared, not inherited: a subclass that changes
    # forward is never fused by mistake.
    fuses_activation = False
    fused_activation: str | None = None

    def __call__(self, *args, **kwargs):
        if args and not isinstance(args[0], Tensor):
            args = (self._as_input(args[0]), *args[1:])
        return self.forward(*args, **kwargs)

    def _as_input(self, value) -> Tensor:
        """An array given to a model (rather than a Tensor), as a constant input: a host array (NumPy,
        a list) moves to the backend, device and dtype of the model's parameters (as Keras casts
        inputs to the layer's dtype); an array of that backend
        is taken as it is; anything else is a ConfigError saying what to pass."""
        first = next(iter(self.parameters()), None)
        if isinstance(value, (np.ndarray, np.generic, list, tuple)):
            host = np.asarray(value)
            if host.dtype.kind not in "biuf":
                raise ConfigError(f"{type(self).__name__} takes numbers, got an array of {host.dtype}")
            if first is None:
                return Tensor(host)
            return Tensor(first.xp.asarray(host, dtype=first.data.dtype, device=first.device))
        if not is_array_api_obj(value):
            raise ConfigError(f"{type(self).__name__} takes a Tensor or an array, got {type(value).__name__}")
        if first is not None and namespace_of(value) is not first.xp:
            raise ConfigError(
                f"{type(self).__name__}'s parameters are {backend_of(first.xp).name} arrays and the input is a "
                f"{backend_of(namespace_of(value)).name} array: move one of them (model.to(...), bp.to_numpy(x))"
            )
        return Tensor(value)

    def __setattr__(self, name: str, value) -> None:
        object.__setattr__(self, name, value)
        changes.note()  # a setting, a sub-module or the mode: what a captured step computes may change

    def __delattr__(self, name: str) -> None:
        object.__delattr__(self, name)
        changes.note()

    def forward(self, *args):
        raise NotImplementedError(f"{type(self).__name__} defines no forward()")

    def children(self):
        """(name, module) for each direct sub-module: attributes, then items of lists, tuples and dicts."""
        return iter(_members_of(self)[1])

    def named_modules(self, prefix: str = ""):
        """(dotted name, module) for this module ("" at the top) and every sub-module, each once."""
        seen, stack = set(), [(prefix.rstrip("."), self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            stack.extend(reversed([(f"{name}.{child}" if name else child, m) for child, m in module.children()]))

    def named_parameters(self, prefix: str = ""):
        """(dotted name, Parameter) for this module's parameters and its sub-modules', each once
        (a shared parameter keeps its first name)."""
        seen = set()
        for name, p in self._parameter_paths(prefix):
            if id(p) not in seen:
                seen.add(id(p))
                yield name, p

    def _parameter_paths(self, prefix: str = "") -> list:
        """(dotted name, Parameter) along every path, own parameters first: a shared parameter or
        module comes once per path to it; a path that comes back to a module on it stops there."""
        paths: list = []
        _collect_parameters(self, prefix, set(), paths)
        return paths

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def count_parameters(self, trainable_only: bool = False) -> int:
        """How many numbers the parameters hold (a shared parameter counted once); with
        `trainable_only`, only those that require a gradient."""
        return sum(math.prod(p.shape) for p in self.parameters() if p.requires_grad or not trainable_only)

    def summary(self, input_shape=None, print_fn=print) -> None:
        """Print a table of the layers (output shape, parameters), the totals, dtype and backend.

        Output shapes come from one zero sample of `input_shape` (without the batch axis; by default
        the first Linear's input width) run through a Sequential's layers in eval mode; a model that
        is not a chain of layers shows "?". `print_fn` gets each line (as Keras's)."""
        from backprop.summary import summary_lines

        for line in summary_lines(self, input_shape):
            print_fn(line)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def train(self, mode: bool = True) -> Module:
        """Training mode (Dropout drops); `eval()` switches it off. Applies to sub-modules."""
        for _, module in self.named_modules():
            module.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def state_dict(self) -> dict:
        """{dotted name: backend array} of every parameter."""
        return {name: p.data for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict) -> None:
        """Copy arrays (any backend, or NumPy) into the parameters. Every parameter must be given,
        under its name or (a shared one) any of its names, with its shape; nothing is copied unless
        all of them are."""
        self.apply_state(self.check_state_dict(state))

    def check_state_dict(self, state: dict) -> dict:
        """`state` checked against the parameters and converted, as {id(parameter): array} for
        `apply_state`, without changing anything (so a caller can check more before it applies)."""
        paths = list(self._parameter_paths())
        names = {name for name, _ in paths}
        given: dict = {}  # id(parameter) -> (name, host array)
        for name, p in paths:
            if name not in state:
                continue
            host = to_numpy(state[name])
            if tuple(host.shape) != p.shape:
                raise StateDictError(
                    f"parameter {name!r}: state dict has shape {tuple(host.shape)}, model has {p.shape}"
                )
            if id(p) in given and not np.array_equal(given[id(p)][1], host):
                raise StateDictError(
                    f"parameters {given[id(p)][0]!r} and {name!r} are one, but differ in the state dict"
                )
            given.setdefault(id(p), (name, host))
        missing = [name for name, p in self.named_parameters() if id(p) not in given]
        unexpected = sorted(state.keys() - names)
        if missing or unexpected:
            raise StateDictError(
                f"state dict does not match {type(self).__name__}: missing {missing}, unexpected {unexpected}"
            )
        return {id(p): p.xp.asarray(given[id(p)][1].astype(dtype_name(p.dtype)), device=p.device)
                for _, p in self.named_parameters()}  # fmt: skip

    def apply_state(self, arrays: dict) -> None:
        """Make the arrays that `check_state_dict` returned the parameters' values (cannot fail):
        written into the parameters' own arrays where the library can, as PyTorch's `copy_`
        (weights tied through shared memory stay tied, an array the caller holds stays the
        parameter); else the parameter takes the array."""
        for _, p in self.named_parameters():
            p.data = put_back(p.data, arrays[id(p)])

    def to(self, backend: str | None = None, device=None, dtype: str | None = None) -> Module:
        """Move every parameter to another backend and/or device and/or floating dtype (in place).

        Unlike PyTorch's `to("cpu")`, the first argument is a backend: `to("torch", device="cuda:0")`."""
        if backend is not None and str(backend).split(":")[0] in ("cpu", "cuda", "gpu", "mps"):
            raise ConfigError(
                f"to() takes a backend first (numpy, torch, cupy, ...), then device=: got {backend!r}; "
                f"e.g. to('torch', device={backend!r}), or to(device={backend!r}) on the current backend"
            )
        if backend is None and device is not None:  # another device of the parameters' own backend
            first = next(iter(self.parameters()), None)
            backend = backend_of(first.xp).name if first is not None else get_backend().name
        target = make_backend(backend, device) if backend else None
        for p in self.parameters():
            host = to_numpy(p.data)
            host = host.astype(dtype) if dtype else host
            if target is not None:
                p.data, p.xp = target.asarray(host), target.xp
            elif dtype:
                p.data = p.xp.asarray(host, device=p.device)
            p.grad = None
        return self

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={child!r}" for name, child in self.children())
        return f"{type(self).__name__}({inner})"


@contextlib.contextmanager
def evaluating(model: Module):
    """`model` in eval mode inside the block; after it, every module back in its own mode (a
    sub-module the user keeps in eval mode stays so)."""
    modes = [(module, module.training) for _, module in model.named_modules()]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            if module.training != mode:
                module.training = mode


def _collect_parameters(module: Module, prefix: str, path: set, out: list) -> None:
    """Append `module`'s parameters and its sub-modules' (depth first) to `out`; `path` holds the
    ids of the modules above it (a cycle stops where it comes back)."""
    own_children = type(module).children is not Module.children  # a module that names its children itself
    parameters, children = _members_of(module, modules=not own_children)
    for name, p in parameters:
        out.append((prefix + name, p))
    path.add(id(module))
    for name, child in module.children() if own_children else children:
        if id(child) not in path:
            _collect_parameters(child, f"{prefix}{name}.", path, out)
    path.discard(id(module))


def _members_of(module: Module, modules: bool = True) -> tuple[list, list]:
    """(name, item) lists of the Parameters and (if `modules`) of the Modules among `module`'s
    attributes: the attributes themselves first, then items of lists, tuples and dicts (so a module
    also held in a list keeps its attribute's name)."""
    found_parameters, found_modules, containers = [], [], []
    for name, value in vars(module).items():
        if isinstance(value, Parameter):
            found_parameters.append((name, value))
        elif isinstance(value, Module):
            found_modules.append((name, value))
        elif isinstance(value, (list, tuple, dict)):
            containers.append((name, value))
    for name, value in containers:
        _members(name, value, Parameter, found_parameters)
        if modules:
            _members(name, value, Module, found_modules)
    return found_parameters, found_modules


def _members(name: str, container, kind, out: list) -> None:
    """Append (dotted name, item) to `out` for the `kind`s inside a list, tuple or dict (nested
    ones too)."""
    items = container.items() if isinstance(container, dict) else enumerate(container)
    for key, item in items:
        if isinstance(item, kind):
            out.append((f"{name}.{key}", item))
        elif isinstance(item, (list, tuple, dict)):
            _members(f"{name}.{key}", item, kind, out)


# --- initializers: host arrays drawn from the seeded generator, fan_in = in_features ---


def _scaled_normal(std):
    return lambda shape, fan_in, fan_out: host_rng().standard_normal(shape) * std(fan_in, fan_out)


def _scaled_uniform(bound):
    return lambda shape, fan_in, fan_out: host_rng().uniform(-1, 1, shape) * bound(fan_in, fan_out)


INITIALIZERS = {
    "standard_normal": _scaled_normal(lambda fan_in, fan_out: 1.0),  # Nielsen: weights and biases ~ N(0, 1)
    "kaiming_normal": _scaled_normal(lambda fan_in, fan_out: math.sqrt(2 / fan_in)),
    "kaiming_normal_fan_out": _scaled_normal(lambda fan_in, fan_out: math.sqrt(2 / fan_out)),
    "kaiming_uniform": _scaled_uniform(lambda fan_in, fan_out: math.sqrt(6 / fan_in)),
    "kaiming_uniform_fan_out": _scaled_uniform(lambda fan_in, fan_out: math.sqrt(6 / fan_out)),
    "glorot_normal": _scaled_normal(lambda fan_in, fan_out: math.sqrt(2 / (fan_in + fan_out))),
    "glorot_uniform": _scaled_uniform(lambda fan_in, fan_out: math.sqrt(6 / (fan_in + fan_out))),
    "zeros": lambda shape, fan_in, fan_out: np.zeros(shape),
}


class Linear(Module):
    """`x @ weight + bias` with `weight` of shape (in_features, out_features): rows are samples.

    `init` names an entry of INITIALIZERS (or is a callable `(shape, fan_in, fan_out) -> array`);
    biases start at zero, except with "standard_normal", which draws them too (as Nielsen does).
    In a Sequential, a following Sigmoid, Tanh or ReLU runs in the same node (`fuses_activation`).
    """

    fuses_activation = True

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init="glorot_uniform", dtype="float32"):
        if isinstance(init, str) and init not in INITIALIZERS:
            raise ConfigError(f"unknown initializer {init!r}; choose one of {', '.join(INITIALIZERS)}")
        draw = INITIALIZERS[init] if isinstance(init, str) else init
        backend = get_backend()
        self.in_features, self.out_features = in_features, out_features
        weight = draw((in_features, out_features), in_features, out_features)
        self.weight = Parameter(backend.asarray(np.ascontiguousarray(weight, dtype=dtype)))
        self.bias = None
        if bias:
            host = draw((out_features,), 1, out_features) if init == "standard_normal" else np.zeros(out_features)
            self.bias = Parameter(backend.asarray(host.astype(dtype)))

    def forward(self, x: Tensor, activation: str | None = None) -> Tensor:
        """`x @ weight + bias`, followed by `activation` in the same node if one is named."""
        try:
            return ops.linear(x, self.weight, self.bias, activation)
        except ValueError:  # name the layer, not just the op
            raise ValueError(f"{self!r} expects input of shape (batch, {self.in_features}), got {x.shape}") from None

    def __repr__(self) -> str:
        return f"Linear({self.in_features}, {self.out_features}, bias={self.bias is not None})"


class Sigmoid(Module):
    fused_activation = "sigmoid"

    def forward(self, x):
        return ops.sigmoid(x)


class Tanh(Module):
    fused_activation = "tanh"

    def forward(self, x):
        return ops.tanh(x)


class ReLU(Module):
    fused_activation = "relu"

    def forward(self, x):
        return ops.relu(x)


class LeakyReLU(Module):
    def __init__(self, negative_slope: float = 0.01):
        self.negative_slope = negative_slope

    def forward(self, x):
        return ops.leaky_relu(x, self.negative_slope)


class Softmax(Module):
    def __init__(self, axis: int = -1):
        self.axis = axis

    def forward(self, x):
        return ops.softmax(x, axis=self.axis)


class Identity(Module):
    def forward(self, x):
        return x


class Dropout(Module):
    """Zero each element with probability `p` in training, scaling the rest by 1/(1-p)."""

    def __init__(self, p: float = 0.5):
        if not 0 <= p < 1:
            raise ConfigError(f"Dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = host_rng().random(x.shape) >= self.p
        scale = (keep / (1 - self.p)).astype(dtype_name(x.dtype))
        return x * Tensor(x.xp.asarray(scale, device=x.device))


class Sequential(Module):
    """Modules applied in order; parameters are named by position ("0.weight", ...)."""

    def __init__(self, *layers: Module):
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: item {i} is {a(type(layer).__name__)}, not a Module")
        self.layers = _Layers(layers)

    def __setattr__(self, name: str, value) -> None:
        if name == "layers" and not isinstance(value, _Layers):
            value = _Layers(value)  # a copy whose edits are noted (backprop.changes), as the first one
        super().__setattr__(name, value)

    def children(self):
        for i, layer in enumerate(self.layers):
            yield str(i), layer

    def forward(self, x):
        """Each layer in turn. Fusion rule: a layer whose class declares `fuses_activation` (Linear),
        followed by one whose class declares `fused_activation` (Sigmoid, Tanh, ReLU), runs as one
        node, `layer(x, activation=name)`: the same numbers, a node fewer."""
        for layer, activation in self._plan():
            if type(layer).__call__ is not _MODULE_CALL or not isinstance(x, Tensor):
                x = layer(x) if activation is None else layer(x, activation=activation)
            else:  # what Module.__call__ would do, a Python call fewer (a class patched since: above)
                x = layer.forward(x) if activation is None else layer.forward(x, activation=activation)
        return x

    def _plan(self) -> tuple:
        """((layer, fused activation or None), ...) for the current layers, made again only after
        a change (backprop.changes) anywhere."""
        plan = vars(self).get(_PLAN)
        if plan is None or plan[0] != changes.count:
            plan = changes.count, _fusion_plan(self.layers)
            object.__setattr__(self, _PLAN, plan)  # a cache, not a change (and not in `structure`)
        return plan[1]

    def __getitem__(self, i):
        return self.layers[i]

    def __setitem__(self, i, layer: Module) -> None:
        self.layers[i] = layer

    def __len__(self):
        return len(self.layers)

    def __repr__(self) -> str:
        return "Sequential(" + ", ".join(map(repr, self.layers)) + ")"


def structure(module: Module) -> tuple:
    """Everything about `module` and its sub-modules that can change what a forward pass computes,
    besides parameter values: each module's path, class, mode and settings (numbers, strings and
    the like by value; arrays and tensors by shape and dtype; sub-modules by path; parameters by
    identity, shape, dtype and `requires_grad`). Equal structures compute alike: what a captured
    step checks when backprop.changes moved."""
    paths = {id(m): name for name, m in module.named_modules()}
    return tuple(
        (name, type(m), m.training, tuple([(k, _setting(v, paths)) for k, v in vars(m).items() if k != _PLAN]))
        for name, m in module.named_modules()
    )


_PLAN = "_planned"  # where a Sequential caches its fusion plan
_MODULE_CALL = Module.__call__


def structure_difference(old: tuple, new: tuple) -> str:
    """Where two `structure`s first differ, in words: "LeakyReLU '1' attribute 'negative_slope' changes"."""
    for (name, kind, mode, settings), (new_name, new_kind, new_mode, new_settings) in zip(old, new, strict=False):
        where = f"{kind.__name__} {name!r}" if name else f"the model ({kind.__name__})"
        if (name, kind) != (new_name, new_kind):
            return f"the module at {name or new_name!r} changes"
        if mode != new_mode:
            return f"{where} switches between train and eval mode"
        if settings != new_settings:
            keys = [key for key, value in settings if (key, value) not in new_settings] or ["(added)"]
            return f"{where} attribute {keys[0]!r} changes"
    return "modules are added or removed"


def _setting(value, paths: dict):
    """What `structure` keeps of one attribute value."""
    if isinstance(value, (bool, int, float, complex, str, bytes, type(None))):
        return value
    if isinstance(value, np.generic):  # a NumPy scalar is a number a trace keeps as a constant
        return "scalar", value.item(), str(value.dtype)
    if isinstance(value, Parameter):
        return "parameter", id(value), value.shape, str(value.dtype), value.requires_grad
    if isinstance(value, Module):
        return "module", paths.get(id(value), id(value))
    if isinstance(value, Tensor) or hasattr(value, "__array_namespace__") or isinstance(value, np.ndarray):
        return "array", tuple(value.shape), str(value.dtype)
    if isinstance(value, (list, tuple)):
        return type(value).__name__, tuple([_setting(item, paths) for item in value])
    if isinstance(value, dict):
        return "dict", tuple([(key, _setting(item, paths)) for key, item in value.items()])
    return "object", id(value)  # a function, a class, anything else: by identity


class _Layers(list):
    """A Sequential's list of layers: inserting, replacing or removing one is a change a captured
    step notices (backprop.changes)."""


def _noting_change(method):
    def changed(self, *args, **kwargs):
        result = method(self, *args, **kwargs)
        changes.note()
        return result

    changed.__name__ = method.__name__
    return changed


for _name in ("__setitem__", "__delitem__", "__iadd__", "__imul__", "append", "extend", "insert", "pop", "remove",
              "clear", "sort", "reverse"):  # fmt: skip
    setattr(_Layers, _name, _noting_change(getattr(list, _name)))


def _fusion_plan(layers) -> tuple:
    """The steps of Sequential.forward: (layer, None) for a layer alone, (layer, name) for a layer
    that applies the activation after it in its own node."""
    plan, i = [], 0
    while i < len(layers):
        name = _fused_activation(layers[i], layers[i + 1]) if i + 1 < len(layers) else None
        plan.append((layers[i], name))
        i += 1 if name is None else 2
    return tuple(plan)


def _fused_activation(layer: Module, after: Module) -> str | None:
    """The activation `layer` applies in its own node when `after` follows it, or None (the rule
    of Sequential.forward: both classes declare their part themselves)."""
    if not vars(type(layer)).get("fuses_activation", False):
        return None
    return vars(type(after)).get("fused_activation")


ACTIVATIONS = {"sigmoid": Sigmoid, "tanh": Tanh, "relu": ReLU, "leaky_relu": LeakyReLU, "identity": Identity}


def mlp(
    sizes, activation: str = "sigmoid", output_activation: str | None = None, init="glorot_uniform", dtype="float32"
):
    """A multilayer perceptron: Linear layers of `sizes` with `activation` between them.

    >>> import backprop as bp
    >>> bp.nn.mlp([784, 30, 10], "sigmoid", output_activation="sigmoid")
    Sequential(Linear(784, 30, bias=True), Sigmoid(), Linear(30, 10, bias=True), Sigmoid())
    """
    sizes = list(sizes)
    if len(sizes) < 2 or any(not isinstance(n, int) or n < 1 for n in sizes):
        raise ConfigError(f"layer sizes must be two or more positive integers, got {sizes}")
    for name in (activation, output_activation):
        if name is not None and name not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    layers = []
    for i, (n_in, n_out) in enumerate(pairwise(sizes)):
        layers.append(Linear(n_in, n_out, init=init, dtype=dtype))
        last = i == len(sizes) - 2
        if not last:
            layers.append(ACTIVATIONS[activation]())
        elif output_activation is not None:
            layers.append(ACTIVATIONS[output_activation]())
    return Sequential(*layers)
