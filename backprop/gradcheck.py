"""Gradient checking by central differences, in float64, against a random upstream gradient.

>>> import backprop as bp
>>> x = bp.tensor([[0.3, -1.2, 0.7]], dtype="float64", requires_grad=True)
>>> bp.gradcheck(lambda t: (t * t).tanh(), x)
True
"""

from __future__ import annotations

import numpy as np

from backprop.backend import dtype_name, to_numpy
from backprop.tensor import Tensor, grad, no_grad


class GradcheckError(AssertionError):
    """An analytical gradient that disagrees with the numerical one."""


# default tolerances of the analytical gradient in each dtype (the numerical one is float64)
TOLERANCES = {"float64": (1e-7, 1e-5), "float32": (1e-4, 1e-3)}


def _on_backend(host: np.ndarray, like: Tensor):
    xp = like.xp
    return xp.asarray(host, device=like.device)


def _as_float64(t: Tensor) -> Tensor:
    return Tensor(t.xp.astype(t.data, t.xp.float64))


def gradcheck(fn, *inputs: Tensor, eps: float = 1e-6, atol=None, rtol=None, seed: int = 0) -> bool:
    """Compare the gradients of `fn(*inputs)` with central differences.

    The analytical gradient is taken in the inputs' dtype; the numerical one always in float64,
    against one random upstream gradient `r` (so the checked scalar is `sum(fn(*inputs) * r)`).
    Returns True, or raises GradcheckError naming the input, the worst element and both values.
    """
    wanted = [i for i, t in enumerate(inputs) if t.requires_grad]
    if not wanted:
        raise ValueError("gradcheck: no input requires a gradient")
    dtype = dtype_name(inputs[wanted[0]].dtype)
    default_atol, default_rtol = TOLERANCES.get(dtype, TOLERANCES["float32"])
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol

    out = fn(*inputs)
    upstream = np.asarray(np.random.default_rng(seed).standard_normal(out.shape))
    analytical = grad(out, [inputs[i] for i in wanted], grad_output=_on_backend(upstream.astype(dtype), out))

    with no_grad():
        doubles = [_as_float64(t) for t in inputs]
        r64 = _on_backend(upstream, doubles[wanted[0]])
        for i, got in zip(wanted, analytical, strict=True):
            expected = _numerical_gradient(fn, doubles, i, r64, eps)
            _compare(to_numpy(got).astype(np.float64), expected, i, atol, rtol)
    return True


def _numerical_gradient(fn, doubles, i: int, upstream, eps: float) -> np.ndarray:
    host = to_numpy(doubles[i].data).astype(np.float64)
    numerical = np.zeros_like(host)
    original = doubles[i].data

    def value(shifted):
        doubles[i].data = _on_backend(shifted, doubles[i])
        out = fn(*doubles).data
        return float(to_numpy(doubles[i].xp.sum(out * upstream)))

    for index in np.ndindex(host.shape):
        shifted = host.copy()
        shifted[index] += eps
        plus = value(shifted)
        shifted[index] -= 2 * eps
        minus = value(shifted)
        numerical[index] = (plus - minus) / (2 * eps)
    doubles[i].data = original
    return numerical


def _compare(got: np.ndarray, expected: np.ndarray, i: int, atol: float, rtol: float) -> None:
    if got.shape != expected.shape:
        raise GradcheckError(f"input {i}: gradient has shape {got.shape}, expected {expected.shape}")
    excess = np.abs(got - expected) - (atol + rtol * np.abs(expected))
    if excess.size and excess.max() > 0:
        worst = np.unravel_index(int(np.argmax(excess)), excess.shape)
        raise GradcheckError(
            f"input {i}: gradient differs at index {tuple(int(k) for k in worst)}: "
            f"analytical {got[worst]!r}, numerical {expected[worst]!r} (atol={atol}, rtol={rtol})"
        )
