"""The peers backprop is measured against, each one training step (or gradient) of a config.

- loop: the textbook per-sample implementation (Nielsen's network.py shape: outer products);
- numpy: the hand-vectorized NumPy step, the floor for array code;
- gemm: only the matrix products of that step, the physical bound where BLAS dominates;
- torch: PyTorch eager, the way its tutorials train (on the CPU or a CUDA device);
- torch.compile: the same PyTorch step with its forward and loss compiled (Inductor);
- jax: a hand-written JAX step, a pure function of (params, x, y) compiled by `jax.jit`, and
  the same step over several batches a call (one `jax.jit` over a `jax.lax.scan`).
Weights are (in, out) and rows are samples throughout, as in backprop. The array peers take the
module they run on, `xp`: NumPy itself, or CuPy for the same code on a GPU.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np


def sigmoid(z, xp=np):
    return 0.5 * xp.tanh(0.5 * z) + 0.5


def init_mlp(sizes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    params = []
    for n_in, n_out in pairwise(sizes):
        weights = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(dtype)
        params += [weights, np.zeros(n_out, dtype)]
    return params


# --- S: sigmoid layers, quadratic cost, SGD ---


def sigmoid_loop_step(params, x, y, lr, _xp=np):
    """Per sample: forward, backward with outer products, summed; then one update (Nielsen)."""
    w1, b1, w2, b2 = params
    grads = [np.zeros_like(p) for p in params]
    for xi, yi in zip(x, y, strict=True):
        a1 = sigmoid(xi @ w1 + b1)
        a2 = sigmoid(a1 @ w2 + b2)
        d2 = (a2 - yi) * a2 * (1 - a2)
        d1 = (w2 @ d2) * a1 * (1 - a1)
        for g, update in zip(grads, (np.outer(xi, d1), d1, np.outer(a1, d2), d2), strict=True):
            g += update
    for p, g in zip(params, grads, strict=True):
        p -= (lr / len(x)) * g


def sigmoid_numpy_step(params, x, y, lr, xp=np):
    w1, b1, w2, b2 = params
    a1 = sigmoid(x @ w1 + b1, xp)
    a2 = sigmoid(a1 @ w2 + b2, xp)
    d2 = (a2 - y) * a2 * (1 - a2) / len(x)
    d1 = (d2 @ w2.T) * a1 * (1 - a1)
    w2 -= lr * (a1.T @ d2)
    b2 -= lr * d2.sum(axis=0)
    w1 -= lr * (x.T @ d1)
    b1 -= lr * d1.sum(axis=0)


# --- L: ReLU layers, softmax cross-entropy, SGD ---


def relu_numpy_step(params, x, labels, lr, xp=np):
    activations, zs = [x], []
    for i in range(0, len(params), 2):
        z = activations[-1] @ params[i] + params[i + 1]
        zs.append(z)
        activations.append(xp.maximum(z, 0) if i < len(params) - 2 else z)
    logits = activations[-1]
    p = xp.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[xp.arange(len(x)), labels] -= 1
    delta = p / len(x)
    for i in range(len(params) - 2, -1, -2):
        grad_w, grad_b = activations[i // 2].T @ delta, delta.sum(axis=0)
        if i:
            delta = (delta @ params[i].T) * (zs[i // 2 - 1] > 0)
        params[i] -= lr * grad_w
        params[i + 1] -= lr * grad_b


def gemm_only_step(params, x, _y, _lr, _xp=np):
    """The matrix products of one MLP step: forward, and backward without the input's gradient."""
    weights = params[0::2]
    activations = [x]
    for w in weights:
        activations.append(activations[-1] @ w)
    delta = activations[-1]
    for i in range(len(weights) - 1, -1, -1):
        activations[i].T @ delta
        if i:
            delta = delta @ weights[i].T


# --- PyTorch: eager and torch.compile ---


def _torch_training(sizes, activation: str, loss: str, dtype, lr, params, device):
    """A PyTorch MLP with the given initial weights, its SGD optimizer, and `loss_of(x, y)`."""
    import torch

    layers = []
    for i, (n_in, n_out) in enumerate(pairwise(sizes)):
        linear = torch.nn.Linear(n_in, n_out, dtype=getattr(torch, dtype), device=device)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(params[2 * i].T.copy()))
            linear.bias.copy_(torch.from_numpy(params[2 * i + 1]))
        layers.append(linear)
        if activation == "sigmoid":
            layers.append(torch.nn.Sigmoid())
        elif i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    cross_entropy = torch.nn.CrossEntropyLoss()

    def loss_of(x, y):
        out = model(x)
        return ((out - y) ** 2).sum() / (2 * len(x)) if loss == "quadratic" else cross_entropy(out, y)

    return model, torch.optim.SGD(model.parameters(), lr=lr), loss_of


def _torch_step(model, optimizer, loss_of):
    """The tutorials' loop body: zero the gradients, the loss, backward, the optimizer's step.
    `step.model` is the model (its parameters, for checks)."""

    def step(x, y):
        optimizer.zero_grad()
        loss_of(x, y).backward()
        optimizer.step()

    step.model = model
    return step


def torch_step_factory(sizes, activation: str, loss: str, dtype, lr, params, device="cpu"):
    """A PyTorch eager training step with the same initial weights, on `device`."""
    return _torch_step(*_torch_training(sizes, activation, loss, dtype, lr, params, device))


def torch_compile_step_factory(sizes, activation: str, loss: str, dtype, lr, params, device="cpu"):
    """The same step with the forward and the loss compiled by `torch.compile` (default mode,
    Inductor: C++ kernels on the CPU, Triton on a GPU); AOTAutograd compiles their backward.
    The optimizer's step stays eager (SGD's foreach update), as in the usual `torch.compile(model)`
    training loop. Compilation happens at the first call (and again for a new batch shape); an
    error there (no C++ compiler, say) is raised by that call."""
    import torch

    model, optimizer, loss_of = _torch_training(sizes, activation, loss, dtype, lr, params, device)
    return _torch_step(model, optimizer, torch.compile(loss_of))


# --- JAX: a hand-written step under jax.jit ---


class JaxStep:
    """`step(x, y)` replaces `step.params` (JAX arrays) with the updated ones. JAX dispatches
    asynchronously: a caller that times steps waits on `step.params` (jax.block_until_ready)."""

    def __init__(self, update, params):
        self.update, self.params = update, params

    def __call__(self, x, y):
        self.params = self.update(self.params, x, y)


def jax_step_factory(sizes, activation: str, loss: str, dtype, lr, params) -> JaxStep:
    """A JAX training step written as a JAX user would: the forward and the loss as pure
    functions, the gradients by `jax.grad` (no hand-written backward), the SGD update returning
    new params, all in one `jax.jit` that donates the old params' buffers to the new ones.

    float64 needs JAX's 64-bit mode; like backprop's JAX backend (`JaxBackend.load`) this turns
    `jax_enable_x64` on for the process, whatever `dtype` is: float32 params and data stay float32
    under it (Python numbers such as `lr` are weakly typed and take the arrays' dtype).
    """
    import jax

    update, start = _jax_update(sizes, activation, loss, dtype, lr, params)
    return JaxStep(jax.jit(update, donate_argnums=0), start)


def jax_scan_factory(sizes, activation: str, loss: str, dtype, lr, params) -> JaxStep:
    """The same step over several batches a call, as a JAX user writes Keras's
    `steps_per_execution`: `step(xs, ys)` with the batches stacked on a first axis, one `jax.jit`
    over a `jax.lax.scan` of the update (the params donated, as above)."""
    import jax

    update, start = _jax_update(sizes, activation, loss, dtype, lr, params)

    def many(params, xs, ys):
        return jax.lax.scan(lambda p, batch: (update(p, *batch), None), params, (xs, ys))[0]

    return JaxStep(jax.jit(many, donate_argnums=0), start)


def _jax_update(sizes, activation: str, loss: str, dtype, lr, params):
    """`update(params, x, y) -> new params` (one SGD step, uncompiled) and the params as JAX arrays."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)

    def forward(params, x):
        a = x
        for i in range(0, len(params), 2):
            z = a @ params[i] + params[i + 1]
            last = i == len(params) - 2
            a = jax.nn.sigmoid(z) if activation == "sigmoid" else z if last else jax.nn.relu(z)
        return a

    def cost(params, x, y):
        out = forward(params, x)
        if loss == "quadratic":
            return jnp.sum((out - y) ** 2) / (2 * x.shape[0])
        log_p = jax.nn.log_softmax(out)
        return -jnp.mean(jnp.take_along_axis(log_p, y[:, None], axis=1))

    def update(params, x, y):
        grads = jax.grad(cost)(params, x, y)
        return [p - lr * g for p, g in zip(params, grads, strict=True)]

    if len(params) != 2 * (len(sizes) - 1):
        raise ValueError(f"{len(params)} arrays for {len(sizes) - 1} layers: give each its weights and bias")
    return update, [jnp.array(p, dtype=dtype) for p in params]


# --- AE: the sparse-autoencoder gradient (the UFLDL tutorial's setting), per sample and vectorized ---

AE_RHO, AE_BETA, AE_LAMBDA = 0.01, 3.0, 1e-4  # sparsity target, its weight, weight decay


def _sparsity_delta(rho_hat):
    """The KL sparsity term's contribution to the hidden layer's delta."""
    return AE_BETA * (-AE_RHO / rho_hat + (1 - AE_RHO) / (1 - rho_hat))


def sparse_ae_loop_gradient(w1, b1, w2, b2, x):
    """The tutorial's formula, one sample at a time (after one pass for the mean activations)."""
    m = len(x)
    sparsity = _sparsity_delta(sigmoid(x @ w1 + b1).mean(axis=0))
    grads = [np.zeros_like(p) for p in (w1, b1, w2, b2)]
    for xi in x:
        a2 = sigmoid(xi @ w1 + b1)
        a3 = sigmoid(a2 @ w2 + b2)
        d3 = (a3 - xi) * a3 * (1 - a3)
        d2 = (w2 @ d3 + sparsity) * a2 * (1 - a2)
        for g, update in zip(grads, (np.outer(xi, d2), d2, np.outer(a2, d3), d3), strict=True):
            g += update
    return [grads[0] / m + AE_LAMBDA * w1, grads[1] / m, grads[2] / m + AE_LAMBDA * w2, grads[3] / m]


def sparse_ae_numpy_gradient(w1, b1, w2, b2, x, xp=np):
    """The same formula, vectorized over the samples."""
    m = len(x)
    a2 = sigmoid(x @ w1 + b1, xp)
    a3 = sigmoid(a2 @ w2 + b2, xp)
    d3 = (a3 - x) * a3 * (1 - a3)
    d2 = (d3 @ w2.T + _sparsity_delta(a2.mean(axis=0))) * a2 * (1 - a2)
    return [x.T @ d2 / m + AE_LAMBDA * w1, d2.sum(axis=0) / m, a2.T @ d3 / m + AE_LAMBDA * w2, d3.sum(axis=0) / m]


# --- layer backward: Linear-ReLU-Linear, forward and backward for a given upstream gradient ---


def layer_numpy(w1, b1, w2, b2, x, upstream, xp=np):
    z = x @ w1 + b1
    h = xp.maximum(z, 0)
    _ = h @ w2 + b2
    dz = (upstream @ w2.T) * (z > 0)
    return x.T @ dz, dz.sum(axis=0), h.T @ upstream, upstream.sum(axis=0)


def layer_outer_loop(w1, b1, w2, b2, x, upstream):
    """The weight gradients as a sum of per-sample outer products (the naive version)."""
    grads = [np.zeros_like(p) for p in (w1, b1, w2, b2)]
    for xi, gi in zip(x, upstream, strict=True):
        z = xi @ w1 + b1
        h = np.maximum(z, 0)
        dz = (w2 @ gi) * (z > 0)
        for g, update in zip(grads, (np.outer(xi, dz), dz, np.outer(h, gi), gi), strict=True):
            g += update
    return grads
