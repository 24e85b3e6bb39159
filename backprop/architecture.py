"""A model's architecture as plain JSON data, and the model built back from it (`save_model`).

Each layer is `{"type": name, **settings}`; a Sequential holds `"layers"`. The built-in layers
describe themselves; a layer class of your own joins by defining `config()` (a dict of JSON values
that its constructor takes back as keyword arguments) and by being passed to `load_model(...,
custom_layers=[MyLayer])`. Built back, a model's built-in layers are zeros until its weights are
loaded (they draw nothing from the random state; a layer of your own draws what its constructor
draws), and each Linear's shape is checked against the file's weights before it is allocated. What
`load_model` could not build back (a layer shared by two places, a setting out of range, nesting
deeper than MAX_DEPTH) is refused by `describe`, before anything is written.

>>> import backprop as bp
>>> config = describe(bp.nn.mlp([4, 3, 2], "relu"))
>>> config["layers"][0], config["layers"][1]
({'type': 'Linear', 'in_features': 4, 'out_features': 3, 'bias': True}, {'type': 'ReLU'})
>>> shapes = {"0.weight": ((4, 3), "float64"), "0.bias": ((3,), "float64"),
...           "2.weight": ((3, 2), "float64"), "2.bias": ((2,), "float64")}
>>> build(config, shapes)
Sequential(Linear(4, 3, bias=True), ReLU(), Linear(3, 2, bias=True))
"""

from __future__ import annotations

import json
import math
import numbers

import numpy as np

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
                  {"negative_slope": (numbers.Real, math.isfinite)}),
    "Softmax": (nn.Softmax, lambda m: {"axis": m.axis}, {"axis": (int, lambda v: True)}),
    "Dropout": (nn.Dropout, lambda m: {"p": m.p}, {"p": (numbers.Real, lambda v: 0 <= v < 1)}),
}  # fmt: skip


def describe(module) -> dict:
    """`module`'s architecture as JSON data. A layer that cannot describe itself, or that
    `load_model` could not build back as it is, is a ConfigError naming it (save the weights alone
    with save_weights, or give its class a `config()`)."""
    seen: dict = {}
    config = _describe(module, "model", 0, seen)
    try:
        json.dumps(config, allow_nan=False)
    except (TypeError, ValueError) as error:  # a config() with a value JSON cannot hold exactly
        raise ConfigError(f"save_model: the model's settings are not plain JSON values ({error})") from None
    return config


def _describe(module, path: str, depth: int, seen: dict) -> dict:
    if depth > MAX_DEPTH:
        raise ConfigError(f"{path}: Sequentials nested more than {MAX_DEPTH} deep cannot be saved")
    if id(module) in seen and (module.parameters() or isinstance(module, nn.Sequential)):
        raise ConfigError(
            f"{path} is the same layer as {seen[id(module)]}: save_model cannot store shared layers; "
            "save the weights alone with save_weights"
        )
    seen.setdefault(id(module), path)
    kind = type(module)
    if kind is nn.Sequential:
        layers = [_describe(m, f"{path}[{i}]", depth + 1, seen) for i, m in enumerate(module.layers)]
        return {"type": "Sequential", "layers": layers}
    if kind.__name__ in BUILT_IN and BUILT_IN[kind.__name__][0] is kind:
        _, settings_of, fields = BUILT_IN[kind.__name__]
        settings = {key: _plain(value) for key, value in settings_of(module).items()}
        _check_settings(kind.__name__, settings, fields, path)
        return {"type": kind.__name__, **settings}
    if callable(getattr(module, "config", None)):
        settings = module.config()
        if not isinstance(settings, dict) or "type" in settings:
            raise ConfigError(f"{path}: {kind.__name__}.config() must give a dict of settings without a 'type' key")
        return {"type": kind.__name__, **settings}
    raise ConfigError(
        f"{path} is {kind.__name__}, which save_model cannot describe: give its class a config() method "
        "(the keyword arguments that rebuild it), or save the weights alone with save_weights"
    )


def _plain(value):
    """A NumPy scalar setting as the Python number it holds (JSON knows no NumPy types)."""
    return value.item() if isinstance(value, np.generic) else value


def build(config, weights: dict, custom_layers=(), path: str = "model"):
    """The model `config` describes, given the file's `weights` ({parameter name: (shape, dtype
    name)}): each Linear in its weight's dtype, its shape checked against the file's before it is
    allocated. A config that is not one is a ConfigError naming where."""
    custom = {cls.__name__: cls for cls in custom_layers}
    return _build(config, weights, custom, path, "", 0)


def _build(config, weights: dict, custom: dict, path: str, prefix: str, depth: int):
    if depth > MAX_DEPTH:
        raise ConfigError(f"{path}: Sequentials nested more than {MAX_DEPTH} deep")
    if not isinstance(config, dict) or not isinstance(config.get("type"), str):
        raise ConfigError(f"{path}: a layer is an object with a 'type', got {str(config):.80}")
    name, settings = config["type"], {k: v for k, v in config.items() if k != "type"}
    if name == "Sequential":
        layers = settings.get("layers")
        if set(settings) != {"layers"} or not isinstance(layers, list):
            raise ConfigError(f"{path}: a Sequential holds exactly a list of 'layers'")
        return nn.Sequential(*(_build(layer, weights, custom, f"{path}[{i}]", f"{prefix}{i}.", depth + 1)
                               for i, layer in enumerate(layers)))  # fmt: skip
    if name in custom:
        return _custom(custom[name], settings, path)
    if name not in BUILT_IN:
        known = ", ".join(["Sequential", *BUILT_IN])
        raise ConfigError(f"{path}: unknown layer type {name!r} (known: {known}; pass your own as custom_layers)")
    cls, _, fields = BUILT_IN[name]
    _check_settings(name, settings, fields, path)
    if cls is nn.Linear:
        return nn.Linear(**settings, init="zeros", dtype=_linear_dtype(settings, weights, prefix, path))
    return cls(**settings)


def _linear_dtype(settings: dict, weights: dict, prefix: str, path: str) -> str:
    """The dtype of the Linear at `prefix`, once the file's weights are known to have its shapes
    (so a file cannot make a big allocation by declaring a big layer)."""
    shapes = {f"{prefix}weight": (settings["in_features"], settings["out_features"])}
    if settings["bias"]:
        shapes[f"{prefix}bias"] = (settings["out_features"],)
    for name, shape in shapes.items():
        found = weights.get(name)
        if found is None or tuple(found[0]) != shape:
            held = "nothing" if found is None else f"shape {tuple(found[0])}"
            raise ConfigError(f"{path}: Linear needs {name!r} of shape {shape}, the file holds {held}")
    return weights[f"{prefix}weight"][1]


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
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{path}: {cls.__name__}(**{settings}) failed: {error}") from error
