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

from backprop.backend import copy_array, namespace_of, to_numpy
from backprop.backends import backend_of
from backprop.errors import ConfigError
from backprop.tensor import Tensor


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

    def __init__(self, params, lr: float):
        self.params = list(params)
        if not self.params:
            raise ConfigError(f"{type(self).__name__} got no parameters to optimize")
        if lr <= 0:
            raise ConfigError(f"learning rate must be positive, got {lr}")
        self.lr = lr
        self.state: list[dict] = [{} for _ in self.params]
        self.steps = 0
        self._immutable = [not backend_of(p.xp).mutable for p in self.params]  # rebind, never write

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

    def update(self, numbers_of, grads=None) -> None:
        """Move each parameter by its gradient; `numbers_of(p)` gives this step's numbers for `p`
        (Python floats in an eager step, 0-d arrays of p's dtype in a captured one). `grads` has one
        gradient per parameter (None: leave that one), each parameter's `.grad` by default."""
        grads = [p.grad for p in self.params] if grads is None else grads
        for p, grad, state, immutable in zip(self.params, grads, self.state, self._immutable, strict=True):
            if grad is not None:
                delta = self._delta(p, grad, state, numbers_of(p))
                if immutable:
                    p.data = p.data - delta
                else:
                    p.data -= delta

    def _delta(self, p: Tensor, grad, state: dict, numbers: dict):
        """What to subtract from `p` this step."""
        raise NotImplementedError

    def state_names(self) -> tuple:
        """The names of each parameter's state arrays, in the order of `state_arrays()`."""
        return tuple([tuple(state) for state in self.state])

    def state_arrays(self) -> list:
        """Every state array, parameter by parameter (the order `state_names()` describes)."""
        return [array for state in self.state for array in state.values()]

    def load_state_arrays(self, arrays) -> None:
        """Replace the state arrays by `arrays` (a list), given in the order of `state_arrays()`;
        nothing changes when their number is wrong."""
        count = sum(map(len, self.state))
        if len(arrays) != count:
            raise ValueError(f"{len(arrays)} state arrays given for a {type(self).__name__} state of {count}")
        it = iter(arrays)
        for state in self.state:
            for name in state:
                state[name] = next(it)

    def snapshot(self):
        """Copies of the state and the step count, for `restore` (to undo steps)."""
        return self.steps, [{name: copy_array(array) for name, array in state.items()} for state in self.state]

    def restore(self, snapshot) -> None:
        steps, states = snapshot
        self.steps = steps
        for own, saved in zip(self.state, states, strict=True):
            own.clear()
            own.update(saved)

    def state_dict(self) -> dict:
        """Hyper-parameters, step count and per-parameter state (host NumPy arrays)."""
        hyper = {k: v for k, v in vars(self).items() if isinstance(v, (int, float, bool))}
        return {"hyper": hyper, "state": [{k: to_numpy(v) for k, v in s.items()} for s in self.state]}

    def load_state_dict(self, state_dict: dict) -> None:
        if len(state_dict["state"]) != len(self.params):
            raise ValueError(f"optimizer state for {len(state_dict['state'])} parameters, but {len(self.params)} given")
        vars(self).update(state_dict["hyper"])
        for p, saved, own in zip(self.params, state_dict["state"], self.state, strict=True):
            own.clear()
            own.update({k: p.xp.asarray(v, device=p.device) for k, v in saved.items()})


class SGD(Optimizer):
    """Stochastic gradient descent; momentum and Nesterov as in PyTorch (v = mu v + g)."""

    hyperparameters = ("momentum", "nesterov", "weight_decay")

    def __init__(self, params, lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(params, lr)
        if nesterov and momentum <= 0:
            raise ConfigError("Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay

    def _delta(self, p, grad, state, numbers):
        if self.weight_decay:
            grad = grad + self.weight_decay * p.data
        if self.momentum:
            velocity = state.get("velocity")
            velocity = grad if velocity is None else self.momentum * velocity + grad
            state["velocity"] = velocity
            grad = grad + self.momentum * velocity if self.nesterov else velocity
        return numbers["lr"] * grad


class Adam(Optimizer):
    """Adam (Kingma & Ba); `weight_decay` adds L2 to the gradient, as in PyTorch's Adam."""

    decoupled = False
    hyperparameters = ("beta1", "beta2", "weight_decay")

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.beta1, self.beta2 = betas
        self.eps, self.weight_decay = eps, weight_decay

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
