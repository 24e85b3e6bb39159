"""A tiny two-layer network trains end to end on every backend through the same code."""

import os
import subprocess
import sys

import numpy as np

import backprop as bp


def _train_xor_like(steps: int = 300) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    x_host = rng.uniform(-1, 1, (64, 2))
    y_host = (x_host[:, :1] * x_host[:, 1:] > 0).astype(np.float64)
    x, y = bp.tensor(x_host, dtype="float64"), bp.tensor(y_host, dtype="float64")
    bp.manual_seed(0)
    params = [bp.randn(2, 16, dtype="float64"), bp.zeros(16, dtype="float64"),
              bp.randn(16, 1, dtype="float64") * 0.5, bp.zeros(1, dtype="float64")]  # fmt: skip
    params = [bp.Tensor(p.data, requires_grad=True) for p in params]
    losses = []
    for _ in range(steps):
        w1, b1, w2, b2 = params
        out = bp.linear(bp.linear(x, w1, b1).tanh(), w2, b2).sigmoid()
        loss = ((out - y) ** 2).mean()
        grads = bp.grad(loss, params)
        with bp.no_grad():
            params = [bp.Tensor(p.data - 2.0 * g, requires_grad=True) for p, g in zip(params, grads, strict=True)]
        losses.append(loss)
    return losses[0].item(), losses[-1].item()


def test_two_layer_network_learns(backend):
    first, last = _train_xor_like()
    assert last < 0.5 * first, (first, last)


def test_trains_under_the_strict_backend_chosen_by_environment_variable():
    code = (
        "import sys; sys.path.insert(0, 'tests'); import test_training_smoke as t, backprop as bp; "
        "assert bp.get_backend().name == 'array_api_strict'; print(*t._train_xor_like())"
    )
    env = {**os.environ, "BACKPROP_BACKEND": "array_api_strict"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    first, last = map(float, out.stdout.split())
    assert last < 0.5 * first
