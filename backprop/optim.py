"""Optimizers (SGD with momentum, Nesterov and weight decay; Adam and AdamW), a learning-rate
schedule, and gradient clipping as a gradient hook.

Updates write into the parameter arrays where the backend allows it and rebind them where its
arrays are immutable (JAX).

>>> import backprop as bp
>>> w = bp.nn.Parameter(bp.tensor([1.0, -2.0]).data)
>>> opt = bp.optim.SGD([w], lr=0.5)
>>> (w * w).sum().backward()
>>> opt.step()
>>> w.numpy().tolist()
[0.0, 0.0]
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from backprop import changes
from backprop.backend import copy_array, dtype_name, namespace_of, put_back, to_numpy
from backprop.backends import backend_of
from backprop.errors import ConfigError, a
from backprop.tensor import Tensor, mark_written


class _Setting:
    """An optimizer setting whose every assignment is checked (the built-in names: `_checked`)
    and, for a hyper-parameter, noted (backprop.changes: a captured step holds it fixed). It
    defines no `__get__`, so reading it stays a plain attribute lookup of the instance's value; a
    class-level default is put there when the optimizer is made."""

    _none = object()

    def __init__(self, name: str, default=_none, noted: bool = True):
        self.name, self.default, self.noted = name, default, noted

    def __set__(self, optimizer, value) -> None:
        optimizer.__dict__[self.name] = _checked(self.name, value)
        if self.noted:
            changes.note()


_RANGES = {  # name: (how messages call it, its range)
    "lr": ("learning rate", {"positive": True}),
    "momentum": ("momentum", {"below_one": True}),
    "beta1": ("beta1", {"below_one": True}),
    "beta2": ("beta2", {"below_one": True}),
    "eps": ("eps", {}),
    "weight_decay": ("weight_decay", {}),
    "dampening": ("dampening", {}),
}
_FLAGS = ("nesterov", "decoupled")


def _checked(name: str, value):
    """A built-in setting's value, checked (a ConfigError names it); others as they are."""
    if name in _FLAGS:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be True or False, got {value!r}")
        return value
    if name in _RANGES:
        label, rules = _RANGES[name]
        return _hyperparameter(label, value, **rules)
    return value


def _parameter_list(params, optimizer: str) -> list:
    """`params` (an iterable of trainable Tensors, or a Module: its parameters) as a list, or a
    ConfigError naming what was passed."""
    if callable(getattr(params, "parameters", None)):  # a Module, as Keras and optax users pass one
        params = params.parameters()
    if isinstance(params, Tensor) or not hasattr(params, "__iter__"):
        raise ConfigError(f"{optimizer} takes model.parameters() or a model, got {type(params).__name__}")
    params = list(params)
    if not params:
        raise ConfigError(f"{optimizer} got no parameters to optimize")
    for i, p in enumerate(params):
        if not isinstance(p, Tensor) or not p.requires_grad:
            what = type(p).__name__ if not isinstance(p, Tensor) else "Tensor without requires_grad"
            raise ConfigError(f"{optimizer} takes trainable parameters (model.parameters()): item {i} is {a(what)}")
    return params


class Optimizer:
    """Holds the parameters, their state arrays and the step count; subclasses define `_delta`.

    A step is two parts: `start_step()`, which counts the step and gives its Python numbers that
    change during training (the learning rate, bias corrections), and `update(numbers, grads)`,
    the array work, which changes no Python state. A captured step (backprop.step.TrainStep) replays
    the array work and passes the numbers in as arrays, so schedules keep working. Any other
    Python number the update reads is named in `hyperparameters`: a captured step captures again
    when one changes. The state arrays are read and replaced through `state_arrays()` and
    `load_state_arrays()`, in a fixed order that `state_names()` describes.
    """

    hyperparameters: tuple[str, ...] = ()
    state_keys: tuple[str, ...] | None = None  # a parameter's state names (None: any; a load holds no others)
    lr = _Setting("lr", noted=False)  # a step number: checked, passed to captured steps on every call

    def __init__(self, params, lr: float):
        self.params = _parameter_list(params, type(self).__name__)
        for name in self.hyperparameters:  # class-level defaults, as instance values
            default = getattr(type(self), name).default
            if default is not _Setting._none and name not in vars(self):
                vars(self)[name] = default
        self.lr = lr
        self.state: list[dict] = [{} for _ in self.params]
        self.steps = 0
        self._immutable = [not backend_of(p.xp).mutable for p in self.params]  # rebind, never write

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for name in cls.hyperparameters:
            value = getattr(cls, name, _Setting._none)  # a class default, a parent's _Setting, or none
            if not isinstance(value, _Setting) or not value.noted:
                setattr(cls, name, _Setting(name, getattr(value, "default", value)))

    def _check_together(self, settings: dict) -> None:
        """Refuse settings (name: value) that are valid one by one but not together."""

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """Update every parameter by its `.grad` (one that has none stays)."""
        numbers = self.start_step()
        self.update(lambda p: numbers)

    def start_step(self) -> dict:
        """Count a step; the numbers of that step (see `numbers`)."""
        self.steps += 1
        return self.numbers()

    def numbers(self) -> dict:
        """This step's numbers that change during training (after `steps` has counted the step)."""
        return {"lr": self.lr}

    def update(self, numbers_of, grads=None, scaled: bool = False) -> None:
        """Move each parameter by its gradient; `numbers_of(p)` gives this step's numbers for `p`
        (Python floats in an eager step, 0-d arrays of p's dtype in a captured one). `grads` has one
        gradient per parameter (None: leave that one), each parameter's `.grad` by default.
        `scaled`: the gradients are already `lr * grad` (see `subtracts_lr_times_grad`)."""
        grads = [p.grad for p in self.params] if grads is None else grads
        written = []
        for p, grad, state, immutable in zip(self.params, grads, self.state, self._immutable, strict=True):
            if grad is not None:
                delta = grad if scaled else self._delta(p, grad, state, numbers_of(p))
                if immutable:  # keeping p's dtype, as `-=` does (a float64 delta, from a float64 batch)
                    new = p.data - delta
                    p.data = new if new.dtype == p.data.dtype else p.xp.astype(new, p.data.dtype)
                else:
                    p.data -= delta
                    written.append(p)
        mark_written(written)  # a graph built before this step can no longer run backward through them

    def _delta(self, p: Tensor, grad, state: dict, numbers: dict):
        """What to subtract from `p` this step."""
        raise NotImplementedError

    def subtracts_lr_times_grad(self) -> bool:
        """Whether the update is `p -= lr * grad` for every parameter, with `lr` the same number
        before and after `start_step()`: a step may then scale the loss's upstream gradient by lr
        and subtract the gradients as they come (`update(..., scaled=True)`)."""
        return False

    def state_names(self) -> tuple:
        """The names of each parameter's state arrays, in the order of `state_arrays()`."""
        return tuple([tuple(state) for state in self.state])

    def state_arrays(self) -> list:
        """Every state array, parameter by parameter (the order `state_names()` describes)."""
        return [array for state in self.state if state for array in state.values()]

    def load_state_arrays(self, arrays) -> None:
        """Replace the state arrays by `arrays` (a list), given in the order of `state_arrays()`;
        nothing changes when their number is wrong."""
        count = sum(map(len, self.state))
        if len(arrays) != count:
            raise ValueError(f"{len(arrays)} state arrays given for {a(type(self).__name__)} state of {count}")
        it = iter(arrays)
        for state in self.state:
            for name in state:
                state[name] = next(it)

    def snapshot(self):
        """Copies of the state and the step count, for `restore` (to undo steps)."""
        return self.steps, [{name: (array, copy_array(array)) for name, array in state.items()} for state in self.state]

    def restore(self, snapshot) -> None:
        """The state and count of `snapshot`: the same arrays again, where they can be written back in place."""
        steps, states = snapshot
        self.steps = steps
        for own, saved in zip(self.state, states, strict=True):
            own.clear()
            own.update({name: put_back(original, copy) for name, (original, copy) in saved.items()})

    def state_dict(self) -> dict:
        """Hyper-parameters, step count and per-parameter state (host NumPy arrays of their own:
        later steps, which may update the state in place, leave them as they are)."""
        state = [{k: np.array(to_numpy(v), copy=True) for k, v in s.items()} for s in self.state]
        return {"hyper": self._hyper(), "state": state}

    def _hyper(self) -> dict:
        return {k: v for k, v in vars(self).items() if isinstance(v, (int, float, bool))}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what `state_dict` gave; nothing changes unless all of it is valid."""
        self.apply_state(self.check_state_dict(state_dict))

    def check_state_dict(self, state_dict: dict) -> tuple:
        """`state_dict` checked (hyper-parameters by name, type and range; one state per parameter,
        each array of a name this optimizer keeps, its parameter's shape, a real floating dtype)
        and converted for `apply_state`, without changing anything."""
        name = type(self).__name__
        hyper, states = state_dict["hyper"], state_dict["state"]
        if not isinstance(hyper, dict) or not isinstance(states, (list, tuple)):
            raise ConfigError(f"{name} state must hold a dict of hyper-parameters and a list of states")
        if len(states) != len(self.params):
            raise ConfigError(f"{name} state for {len(states)} parameters, but {len(self.params)} given")
        own = self._hyper()
        for key, value in hyper.items():
            if key not in own:
                raise ConfigError(f"{name} has no hyper-parameter {key!r} (it has {sorted(own)})")
            _check_loaded(key, value, type(own[key]))
        self._check_together({**own, **hyper})
        converted = []
        for i, (p, saved) in enumerate(zip(self.params, states, strict=True)):
            arrays = {}
            for key, array in saved.items():
                if self.state_keys is not None and key not in self.state_keys:
                    raise ConfigError(f"{name} keeps no state {key!r} (only {list(self.state_keys)}), parameter {i}")
                array = to_numpy(array)
                if array.shape != p.shape or array.dtype.kind != "f":
                    raise ConfigError(
                        f"{name} state {key!r} of parameter {i} is {array.dtype} {array.shape}, "
                        f"not a floating array of its shape {p.shape}"
                    )
                arrays[key] = p.xp.asarray(array.astype(dtype_name(p.dtype)), device=p.device)
            converted.append(arrays)
        return dict(hyper), converted

    def apply_state(self, checked: tuple) -> None:
        """Make what `check_state_dict` returned the optimizer's state (cannot fail)."""
        hyper, states = checked
        vars(self).update(hyper)
        for own, saved in zip(self.state, states, strict=True):
            own.clear()
            own.update(saved)
        changes.note()  # hyper-parameters set past __setattr__


def _check_loaded(key: str, value, kind: type) -> None:
    """A loaded hyper-parameter: of its kind (bool, int or float) and, for a built-in one, in its range."""
    if key == "steps":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"the step count must be a whole number >= 0, got {value!r}")
    elif key in _FLAGS or key in _RANGES:
        _checked(key, value)
    elif kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"hyper-parameter {key!r} must be true or false, got {value!r}")
    else:
        _hyperparameter(key, value, nonnegative=False)


def _hyperparameter(name: str, value, positive=False, below_one=False, nonnegative=True) -> float:
    """`value` as a float, checked: a finite real number, >= 0 if `nonnegative` (> 0 if `positive`,
    < 1 if `below_one`); else a ConfigError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")
    if nonnegative and value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")
    if below_one and value >= 1:
        raise ConfigError(f"{name} must be below 1, got {value}")
    return float(value)


class SGD(Optimizer):
    """Stochastic gradient descent; momentum and Nesterov as in PyTorch (v = mu v + g).

    Checked: lr > 0, 0 <= momentum < 1 and weight_decay >= 0, all finite (else ConfigError)."""

    hyperparameters = ("momentum", "nesterov", "weight_decay")
    state_keys = ("velocity",)

    def __init__(self, params, lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay  # each checked
        self._check_together(vars(self))

    def _check_together(self, settings: dict) -> None:
        if settings["nesterov"] and settings["momentum"] <= 0:
            raise ConfigError("Nesterov momentum needs momentum > 0")

    def subtracts_lr_times_grad(self) -> bool:
        cls = type(self)  # a subclass that changes how lr is set, read or applied is not plain SGD
        plain = cls is SGD or all(getattr(cls, name) is getattr(SGD, name) for name in _HOW_SGD_USES_LR)
        return plain and not self.momentum and not self.weight_decay

    def _delta(self, p, grad, state, numbers):
        if self.weight_decay:
            grad = grad + self.weight_decay * p.data
        if self.momentum:
            velocity = state.get("velocity")
            velocity = grad if velocity is None else self.momentum * velocity + grad
            state["velocity"] = velocity
            grad = grad + self.momentum * velocity if self.nesterov else velocity
        return numbers["lr"] * grad


_HOW_SGD_USES_LR = ("lr", "start_step", "numbers", "update", "_delta")


class Adam(Optimizer):
    """Adam (Kingma & Ba); `weight_decay` adds L2 to the gradient, as in PyTorch's Adam.

    Checked: lr > 0, each beta in [0, 1), eps >= 0 and weight_decay >= 0, all finite (else ConfigError)."""

    decoupled = False
    hyperparameters = ("beta1", "beta2", "weight_decay", "decoupled")
    state_keys = ("m", "v")
    eps = _Setting("eps", noted=False)  # a step number (scaled by the bias correction): checked only

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr)
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise ConfigError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        self.beta1, self.beta2, self.eps, self.weight_decay = beta1, beta2, eps, weight_decay  # each checked

    def numbers(self) -> dict:
        """The learning rate and the bias corrections of step `steps`, folded into two numbers."""
        correction = math.sqrt(1 - self.beta2**self.steps)
        return {
            "lr": self.lr,
            "step_size": self.lr * correction / (1 - self.beta1**self.steps),
            "eps": self.eps * correction,
        }

    def _delta(self, p, grad, state, numbers):
        xp = p.xp
        if self.weight_decay and not self.decoupled:
            grad = grad + self.weight_decay * p.data
        m = state.get("m", 0.0) * self.beta1 + (1 - self.beta1) * grad
        v = state.get("v", 0.0) * self.beta2 + (1 - self.beta2) * (grad * grad)
        state["m"], state["v"] = m, v
        delta = numbers["step_size"] * m / (xp.sqrt(v) + numbers["eps"])
        if self.weight_decay and self.decoupled:
            delta = delta + numbers["lr"] * self.weight_decay * p.data
        return delta


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p -= lr * wd * p besides the step."""

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(params, lr, betas, eps, weight_decay)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


class ClipGradNorm:
    """A gradient hook: scale all gradients together so that their total L2 norm is at most
    `max_norm` (PyTorch's `clip_grad_norm_`). Pass it to `TrainStep(..., gradient_hooks=[...])`
    or `fit(..., gradient_hooks=[...])`; it is array work only, so a captured step captures it too.

    >>> import numpy as np, backprop as bp
    >>> clipped = bp.optim.ClipGradNorm(1.0)([np.array([3.0, 4.0]), None])
    >>> np.round(clipped[0], 6).tolist(), clipped[1]
    ([0.6, 0.8], None)
    """

    hyperparameters = ("max_norm", "eps")  # read by a captured step's key: a change captures again

    def __init__(self, max_norm: float, eps: float = 1e-6):
        if not max_norm > 0:
            raise ConfigError(f"max_norm must be positive, got {max_norm}")
        self.max_norm, self.eps = float(max_norm), eps

    def __call__(self, grads: list) -> list:
        present = [g for g in grads if g is not None]
        if not present:
            return list(grads)
        xp = namespace_of(present[0])
        total = xp.sum(present[0] * present[0])
        for g in present[1:]:
            total = total + xp.sum(g * g)
        scale = xp.minimum(self.max_norm / (xp.sqrt(total) + self.eps), 1.0)
        return [None if g is None else g * xp.astype(scale, g.dtype) for g in grads]


class ExponentialDecay:
    """A `fit` callback that multiplies the optimizer's learning rate by `gamma` after each epoch.

    >>> import backprop as bp
    >>> opt = bp.optim.SGD([bp.nn.Parameter(bp.zeros(1).data)], lr=1.0)
    >>> schedule = bp.optim.ExponentialDecay(opt, gamma=0.5)
    >>> schedule.on_epoch_end(None, {}), opt.lr
    (False, 0.5)
    """

    def __init__(self, optimizer: Optimizer, gamma: float):
        if not 0 < gamma <= 1:
            raise ConfigError(f"decay factor gamma must be in (0, 1], got {gamma}")
        self.optimizer, self.gamma = optimizer, gamma

    def on_epoch_end(self, model, record) -> bool:
        self.optimizer.lr *= self.gamma
        return False
