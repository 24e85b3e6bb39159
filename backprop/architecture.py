"""A model's architecture as plain JSON data, and the model built back from it (`save_model`).

Each layer is `{"type": name, **settings}`; a Sequential holds `"layers"`. The built-in layers
describe themselves; a layer class of your own joins by defining `config()` (a dict of JSON values
that its constructor takes back as keyword arguments) and by being passed to `load_model(...,
custom_layers=[MyLayer])`. Built back, a model's parameters are zeros until its weights are loaded
(nothing is drawn from the random state).

>>> import backprop as bp
>>> config = describe(bp.nn.mlp([4, 3, 2], "relu"))
>>> config["layers"][0], config["layers"][1]
({'type': 'Linear', 'in_features': 4, 'out_features': 3, 'bias': True}, {'type': 'ReLU'})
>>> build(config, {"0.weight": "float64"})
Sequential(Linear(4, 3, bias=True), ReLU(), Linear(3, 2, bias=True))
"""

from __future__ import annotations

import numbers

from backprop import nn
from backprop.errors import ConfigError

MAX_DEPTH = 64  # Sequentials nested deeper than this are refused (no recursion bomb)


def _linear(m) -> dict:
    return {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}


# name -> (class, its settings as a dict, {setting: (kind, check)})
BUILT_IN = {
    "Linear": (nn.Linear, _linear, {"in_features": (int, lambda v: v >= 1), "out_features": (int, lambda v: v >= 1),
                                    "bias": (bool, lambda v: True)}),
    "Sigmoid": (nn.Sigmoid, lambda m: {}, {}),
    "Tanh": (nn.Tanh, lambda m: {}, {}),
    "ReLU": (nn.ReLU, lambda m: {}, {}),
    "Identity": (nn.Identity, lambda m: {}, {}),
    "LeakyReLU": (nn.LeakyReLU, lambda m: {"negative_slope": m.negative_slope},
                  {"negative_slope": (numbers.Real, lambda v: v == v)}),
    "Softmax": (nn.Softmax, lambda m: {"axis": m.axis}, {"axis": (int, lambda v: True)}),
    "Dropout": (nn.Dropout, lambda m: {"p": m.p}, {"p": (numbers.Real, lambda v: 0 <= v < 1)}),
}  # fmt: skip


def describe(module, path: str = "model") -> dict:
    """`module`'s architecture as JSON data; a layer that cannot describe itself is a ConfigError
    naming it (use save_weights for it, or give its class a `config()`)."""
    kind = type(module)
    if kind is nn.Sequential:
        return {"type": "Sequential", "layers": [describe(m, f"{path}[{i}]") for i, m in enumerate(module.layers)]}
    if kind.__name__ in BUILT_IN and BUILT_IN[kind.__name__][0] is kind:
        return {"type": kind.__name__, **BUILT_IN[kind.__name__][1](module)}
    if callable(getattr(module, "config", None)):
        return {"type": kind.__name__, **module.config()}
    raise ConfigError(
        f"{path} is {kind.__name__}, which save_model cannot describe: give its class a config() method "
        "(the keyword arguments that rebuild it), or save the weights alone with save_weights"
    )


def build(config, dtypes: dict, custom_layers=(), path: str = "model"):
    """The model `config` describes, its Linear layers in the dtype of their weight in `dtypes`
    ({parameter name: dtype name}); a config that is not one is a ConfigError naming where."""
    custom = {cls.__name__: cls for cls in custom_layers}
    return _build(config, dtypes, custom, path, "", 0)


def _build(config, dtypes: dict, custom: dict, path: str, prefix: str, depth: int):
    if depth > MAX_DEPTH:
        raise ConfigError(f"{path}: Sequentials nested more than {MAX_DEPTH} deep")
    if not isinstance(config, dict) or not isinstance(config.get("type"), str):
        raise ConfigError(f"{path}: a layer is an object with a 'type', got {str(config):.80}")
    name, settings = config["type"], {k: v for k, v in config.items() if k != "type"}
    if name == "Sequential":
        layers = settings.get("layers")
        if set(settings) != {"layers"} or not isinstance(layers, list):
            raise ConfigError(f"{path}: a Sequential holds exactly a list of 'layers'")
        return nn.Sequential(*(_build(layer, dtypes, custom, f"{path}[{i}]", f"{prefix}{i}.", depth + 1)
                               for i, layer in enumerate(layers)))  # fmt: skip
    if name in custom:
        return _custom(custom[name], settings, path)
    if name not in BUILT_IN:
        known = ", ".join(["Sequential", *BUILT_IN])
        raise ConfigError(f"{path}: unknown layer type {name!r} (known: {known}; pass your own as custom_layers)")
    cls, _, fields = BUILT_IN[name]
    _check_settings(name, settings, fields, path)
    if cls is nn.Linear:
        return nn.Linear(**settings, init="zeros", dtype=dtypes.get(f"{prefix}weight", "float32"))
    return cls(**settings)


def _check_settings(name: str, settings: dict, fields: dict, path: str) -> None:
    if set(settings) != set(fields):
        raise ConfigError(f"{path}: {name} takes the settings {sorted(fields)}, got {sorted(settings)}")
    for key, (kind, valid) in fields.items():
        value = settings[key]
        right_kind = (
            isinstance(value, bool) if kind is bool else isinstance(value, kind) and not isinstance(value, bool)
        )
        if not right_kind or not valid(value):
            raise ConfigError(f"{path}: {name} {key}={value!r} is not a valid value")


def _custom(cls, settings: dict, path: str):
    try:
        return cls(**settings)
    except TypeError as error:
        raise ConfigError(f"{path}: {cls.__name__}(**{settings}) failed: {error}") from error
