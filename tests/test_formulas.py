"""Formulas checked against independent NumPy references: gradients of reductions over negative
axes, the tie and bound conventions of maximum/minimum/clip, losses at the edges of their domain
(in float16/32/64), soft cross-entropy targets, and a few optimizer steps written out by hand.

Each reference is written here in NumPy (float64), with distinct non-square shapes and random
upstream gradients, so that a transposed, misplaced or mis-scaled gradient cannot pass.
"""

import importlib.util

import numpy as np
import pytest

import backprop as bp
from backprop import losses, optim

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")


def _t(array, dtype="float64", requires_grad=False):
    return bp.tensor(np.asarray(array, dtype=np.float64), dtype=dtype, requires_grad=requires_grad)


def _grads(out, inputs, upstream):
    """The gradients of `out` (against `upstream`) as host float64 arrays."""
    got = bp.grad(out, inputs, grad_output=_t(upstream, bp.backend.dtype_name(out.dtype)))
    return [bp.to_numpy(g).astype(np.float64) for g in got]


def _close(got, want, rtol=1e-12, atol=1e-12):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=rtol, atol=atol, strict=True)


def _needs_float16():
    if not hasattr(bp.get_backend().xp, "float16"):
        pytest.skip("this backend has no float16")


def _softmax(z, axis=-1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(z, axis=-1):
    shifted = z - z.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


# --- reductions over negative axes ---

X3 = np.random.default_rng(11).normal(size=(2, 3, 5))


def _onehot_max(x, axis):
    """1 at the (unique) maximum along `axis`, 0 elsewhere."""
    return (x == x.max(axis=axis, keepdims=True)).astype(np.float64)


REDUCTIONS = {
    # name: (reduce with backprop, value in NumPy, d value / d x given the upstream expanded to x's shape)
    "sum": (bp.sum, np.sum, lambda x, axis: np.ones_like(x)),
    "mean": (bp.mean, np.mean, lambda x, axis: np.ones_like(x) / np.prod([x.shape[a] for a in np.atleast_1d(axis)])),
    "max": (bp.max, np.max, _onehot_max),
    "logsumexp": (
        bp.logsumexp,
        lambda x, axis, keepdims=False: np.log(np.exp(x).sum(axis=axis, keepdims=keepdims)),
        lambda x, axis: np.exp(x - np.log(np.exp(x).sum(axis=axis, keepdims=True))),
    ),
}


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", [-1, -2, (-1, -3)])
@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reductions_over_negative_axes_match_numpy_with_a_random_upstream(backend, name, axis, keepdims):
    ours, numpy_value, local = REDUCTIONS[name]
    x = _t(X3, requires_grad=True)
    out = ours(x, axis=axis, keepdims=keepdims)
    want = numpy_value(X3, axis=axis, keepdims=keepdims)
    assert out.shape == want.shape
    _close(out.numpy(), want)
    upstream = np.random.default_rng(5).normal(size=want.shape)
    expanded = upstream if keepdims else np.expand_dims(upstream, axis)
    (got,) = _grads(out, [x], upstream)
    _close(got, np.broadcast_to(expanded, X3.shape) * local(X3, axis))
    assert bp.gradcheck(lambda t: ours(t, axis=axis, keepdims=keepdims), x)


def test_max_over_a_negative_axis_shares_a_tie_among_the_tied_elements(backend):
    x_host = np.array([[[1.0, 4.0, 4.0, 0.5], [2.0, 2.0, 2.0, -1.0]], [[0.0, -3.0, 5.0, 1.0], [7.0, 6.0, 7.0, 7.0]]])
    x = _t(x_host, requires_grad=True)
    upstream = np.random.default_rng(7).normal(size=(2, 2))
    (got,) = _grads(bp.max(x, axis=-1), [x], upstream)
    winners = _onehot_max(x_host, -1)
    _close(got, upstream[..., None] * winners / winners.sum(axis=-1, keepdims=True))


def test_a_negative_axis_is_the_same_reduction_as_its_positive_twin(backend):
    x = _t(X3, requires_grad=True)
    upstream = np.random.default_rng(6).normal(size=(2, 5))
    for name, (ours, _, _) in REDUCTIONS.items():
        negative = _grads(ours(x, axis=-2), [x], upstream)[0]
        positive = _grads(ours(x, axis=1), [x], upstream)[0]
        np.testing.assert_array_equal(negative, positive, strict=True, err_msg=name)


# --- ties and bounds ---


def _tied_pair():
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(3, 4)), rng.normal(size=4)
    a[0, :] = b  # a whole row of ties
    a[2, 1] = b[1]
    return a, b


@pytest.mark.parametrize("name", ["maximum", "minimum"])
def test_maximum_and_minimum_split_the_gradient_of_a_tie_evenly(backend, name):
    """The convention (see their docstrings; PyTorch's too): the winner takes the gradient, a tie
    gives each operand half, and a broadcast operand sums what its copies got."""
    a_host, b_host = _tied_pair()
    a, b = _t(a_host, requires_grad=True), _t(b_host, requires_grad=True)
    out = getattr(bp, name)(a, b)
    wins = a_host > b_host if name == "maximum" else a_host < b_host
    _close(out.numpy(), np.where(wins, a_host, np.broadcast_to(b_host, a_host.shape)))
    upstream = np.random.default_rng(9).normal(size=(3, 4))
    share = wins + 0.5 * (a_host == b_host)
    ga, gb = _grads(out, [a, b], upstream)
    _close(ga, upstream * share)
    _close(gb, (upstream * (1 - share)).sum(axis=0))
    assert ga[0].tolist() == (upstream[0] / 2).tolist()  # exactly half, not a whole or nothing


@pytest.mark.parametrize("low, high", [(-1.0, 1.1), (-1.0, None), (None, 1.1)])
def test_clip_passes_the_gradient_inside_its_bounds_bounds_included(backend, low, high):
    """The convention (see clip's docstring; torch.clamp's too): an input equal to a bound gets
    the gradient, one outside gets 0."""
    x_host = np.array([[-1.0, 1.1, -1.5, 0.3, 2.0], [1.1, -0.2, -1.0, -3.0, 0.9], [0.0, 1.2, -0.99, 1.05, -1.01]])
    x = _t(x_host, requires_grad=True)
    out = bp.clip(x, low, high)
    _close(out.numpy(), np.clip(x_host, low, high))
    inside = np.ones_like(x_host, dtype=bool)
    if low is not None:
        inside &= x_host >= low
    if high is not None:
        inside &= x_host <= high
    upstream = np.random.default_rng(10).normal(size=x_host.shape)
    (got,) = _grads(out, [x], upstream)
    _close(got, np.where(inside, upstream, 0.0))


@needs_torch
def test_the_tie_and_bound_conventions_are_pytorchs():
    import torch

    a_host, b_host = _tied_pair()
    upstream = np.random.default_rng(12).normal(size=(3, 4))
    for name in ("maximum", "minimum"):
        a, b = _t(a_host, requires_grad=True), _t(b_host, requires_grad=True)
        ta, tb = torch.tensor(a_host, requires_grad=True), torch.tensor(b_host, requires_grad=True)
        getattr(torch, name)(ta, tb).backward(torch.tensor(upstream))
        ga, gb = _grads(getattr(bp, name)(a, b), [a, b], upstream)
        _close(ga, ta.grad.numpy())
        _close(gb, tb.grad.numpy())
    x_host = np.array([[-1.0, 1.1, -1.5, 0.3], [1.1, -0.2, 2.0, -1.0], [0.5, -1.0, 1.1, 3.0]])
    x, tx = _t(x_host, requires_grad=True), torch.tensor(x_host, requires_grad=True)
    torch.clamp(tx, -1.0, 1.1).backward(torch.tensor(upstream))
    _close(_grads(bp.clip(x, -1.0, 1.1), [x], upstream)[0], tx.grad.numpy())


# --- losses at the edges of their domain, in every float dtype ---

DTYPES = ["float16", "float32", "float64"]
TOLERANCE = {"float16": 2e-3, "float32": 2e-6, "float64": 1e-12}


def _dtype(dtype):
    if dtype == "float16":
        _needs_float16()
    return dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_cross_entropy_clips_with_the_dtypes_epsilon_at_p_0_and_1(backend, dtype):
    """p = t = 1 gave NaN in float32 (1 - 1e-12 rounds to 1, and 0 * log 0 is NaN)."""
    p_host = np.array([[0.0, 1.0, 1.0], [0.0, 0.25, 1.0]])
    t_host = np.array([[0.0, 1.0, 0.0], [1.0, 0.75, 0.5]])
    p = _t(p_host, _dtype(dtype), requires_grad=True)
    loss = losses.binary_cross_entropy(p, _t(t_host, dtype))
    eps = max(1e-12, float(np.finfo(dtype).eps))
    P = np.clip(p_host, eps, 1 - eps)
    want = -np.mean(t_host * np.log(P) + (1 - t_host) * np.log(1 - P))
    (grad,) = _grads(loss, [p], np.array(0.7))
    assert np.isfinite(loss.item()) and np.isfinite(grad).all()
    _close(loss.item(), want, rtol=TOLERANCE[dtype])
    _close(grad, 0.7 * (P - t_host) / (P * (1 - P)) / P.size, rtol=TOLERANCE[dtype])


@pytest.mark.parametrize("name", ["quadratic", "mse"])
def test_squared_losses_are_finite_in_float16_where_their_value_fits(backend, name):
    """300 ** 2 overflows float16 (65504), but the mean over two elements, 45000, fits."""
    _needs_float16()
    diff = np.array([[300.0, 0.0]])
    loss_fn, want = {"quadratic": (losses.quadratic_loss, 45000.0), "mse": (losses.mse_loss, 45000.0)}[name]
    loss = loss_fn(_t(diff, "float16", requires_grad=True), _t(np.zeros((1, 2)), "float16"))
    _close(loss.item(), want, rtol=TOLERANCE["float16"])


LOGITS_LARGE = np.array([[-1000.0, -100.0, 0.5, 30.0], [100.0, 1000.0, -3.0, -30.0], [-250.0, 800.0, 0.0, 99.5]])


def _sigmoid(z):
    return np.where(z >= 0, 1 / (1 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_binary_cross_entropy_with_logits_is_the_stable_formula_at_large_logits(backend, dtype):
    t_host = np.array([[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.5, 1.0], [0.25, 0.0, 1.0, 1.0]])
    z = _t(LOGITS_LARGE, dtype, requires_grad=True)
    loss = losses.binary_cross_entropy_with_logits(z, _t(t_host, dtype))
    want = np.mean(np.maximum(LOGITS_LARGE, 0) - LOGITS_LARGE * t_host + np.log1p(np.exp(-np.abs(LOGITS_LARGE))))
    (grad,) = _grads(loss, [z], np.array(1.3))
    _close(loss.item(), want, rtol=TOLERANCE[dtype])
    _close(grad, 1.3 * (_sigmoid(LOGITS_LARGE) - t_host) / t_host.size, rtol=TOLERANCE[dtype], atol=1e-9)


@pytest.mark.parametrize("target", ["labels", "one_hot"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cross_entropy_is_the_stable_formula_at_large_logits(backend, dtype, target):
    labels = np.array([0, 3, 1])
    T = np.eye(4)[labels]
    z = _t(LOGITS_LARGE, dtype, requires_grad=True)
    loss = losses.cross_entropy(z, bp.tensor(labels) if target == "labels" else _t(T, dtype))
    want = -np.mean(np.sum(T * _log_softmax(LOGITS_LARGE), axis=1))
    (grad,) = _grads(loss, [z], np.array(-0.8))
    assert np.isfinite(loss.item()) and np.isfinite(grad).all()
    _close(loss.item(), want, rtol=TOLERANCE[dtype])
    _close(grad, -0.8 * (_softmax(LOGITS_LARGE) - T) / 3, rtol=TOLERANCE[dtype], atol=1e-7)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_log_softmax_is_the_stable_formula_at_large_logits(backend, dtype):
    z = _t(LOGITS_LARGE, dtype, requires_grad=True)
    out = bp.log_softmax(z, axis=-1)
    upstream = np.random.default_rng(13).normal(size=LOGITS_LARGE.shape)
    (grad,) = _grads(out, [z], upstream)
    _close(out.numpy(), _log_softmax(LOGITS_LARGE), rtol=TOLERANCE[dtype])
    want = upstream - _softmax(LOGITS_LARGE) * upstream.sum(axis=1, keepdims=True)
    _close(grad, want, rtol=TOLERANCE[dtype], atol=1e-6)


EDGE_CASES = {
    # loss: (prediction at the edge of its domain, target)
    "quadratic": ([[0.0, 1.0, 1.0], [1.0, 0.0, 0.5]], [[1.0, 0.0, 1.0], [0.0, 1.0, 0.5]]),
    "mse": ([[0.0, 1.0, 1.0], [1.0, 0.0, 0.5]], [[1.0, 0.0, 1.0], [0.0, 1.0, 0.5]]),
    "bce": ([[0.0, 1.0, 1.0], [1.0, 0.0, 0.5]], [[1.0, 0.0, 1.0], [0.0, 1.0, 0.5]]),
    "bce_logits": ([[-6e4, 6e4, 1.0], [6e4, -6e4, -2.0]], [[1.0, 0.0, 1.0], [0.0, 1.0, 0.5]]),
    "cross_entropy": ([[-4e4, 4e4, 1.0], [4e4, -4e4, -2.0]], [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
    "nll": ([[-np.inf, 0.0, -np.inf], [-1.0, -0.5, -np.inf]], [[0.0, 1.0, 0.0], [0.3, 0.7, 0.0]]),
}


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_every_loss_is_finite_at_the_edges_of_its_domain_in_low_precision(backend, name, dtype):
    pred, target = EDGE_CASES[name]
    x = _t(pred, _dtype(dtype), requires_grad=True)
    with np.errstate(over="ignore"):  # float16 logits 8e4 apart: their difference is -inf, rightly
        loss = losses.LOSSES[name](x, _t(target, dtype))
    (grad,) = _grads(loss, [x], np.array(1.0))
    assert np.isfinite(loss.item()), f"{name} in {dtype}: {loss.item()}"
    assert np.isfinite(grad).all(), f"{name} in {dtype}: {grad}"


def test_every_loss_has_an_edge_case():
    assert set(losses.LOSSES) == set(EDGE_CASES)


def test_nll_reads_only_the_target_classes(backend):
    log_prob = np.array([[-np.inf, -0.1, -2.0], [-0.7, -np.inf, -0.9]])
    labels = np.array([1, 2])
    x = _t(log_prob, requires_grad=True)
    loss = losses.nll_loss(x, bp.tensor(labels))
    _close(loss.item(), -(log_prob[0, 1] + log_prob[1, 2]) / 2)
    _close(_grads(loss, [x], np.array(2.0))[0], -2.0 * np.eye(3)[labels] / 2)


def test_kl_sparsity_of_a_saturated_unit_is_finite_in_float32(backend):
    activations = _t([[1.0, 0.2, 0.0], [1.0, 0.4, 0.0]], "float32", requires_grad=True)
    penalty = losses.kl_sparsity(activations, rho=0.05)
    (grad,) = _grads(penalty, [activations], np.array(1.0))
    assert np.isfinite(penalty.item()) and np.isfinite(grad).all()


def test_a_mean_loss_over_many_float16_elements_does_not_overflow(backend):
    _needs_float16()
    p_host = np.full((4000, 30), 0.5)  # a float16 sum of 120000 elements of 0.69 would be inf
    t_host = np.zeros((4000, 30))
    loss = losses.binary_cross_entropy(_t(p_host, "float16"), _t(t_host, "float16"))
    _close(loss.item(), np.log(2), rtol=2e-3)


# --- cross-entropy with soft targets whose rows need not sum to 1 ---

SOFT_LOGITS = np.random.default_rng(14).normal(size=(5, 4)) * 2
SOFT_TARGETS = np.random.default_rng(15).uniform(0, 1, size=(5, 4))  # rows sum to about 2


def test_cross_entropy_gradient_with_soft_targets_is_that_of_its_value(backend):
    z = _t(SOFT_LOGITS, requires_grad=True)
    loss = losses.cross_entropy(z, _t(SOFT_TARGETS))
    _close(loss.item(), -np.mean(np.sum(SOFT_TARGETS * _log_softmax(SOFT_LOGITS), axis=1)))
    rowsum = SOFT_TARGETS.sum(axis=1, keepdims=True)
    _close(_grads(loss, [z], np.array(0.6))[0], 0.6 * (_softmax(SOFT_LOGITS) * rowsum - SOFT_TARGETS) / 5)
    assert bp.gradcheck(lambda t: losses.cross_entropy(t, _t(SOFT_TARGETS)), z)


@needs_torch
def test_cross_entropy_with_soft_targets_matches_pytorch():
    import torch
    import torch.nn.functional as F

    tz = torch.tensor(SOFT_LOGITS, requires_grad=True)
    want = F.cross_entropy(tz, torch.tensor(SOFT_TARGETS))
    want.backward()
    z = _t(SOFT_LOGITS, requires_grad=True)
    loss = losses.cross_entropy(z, _t(SOFT_TARGETS))
    loss.backward()
    _close(loss.item(), want.item())
    _close(bp.to_numpy(z.grad), tz.grad.numpy())


# --- optimizers: a few steps against the algorithms written out in NumPy ---

W0 = np.random.default_rng(16).normal(size=(3, 2))
B0 = np.random.default_rng(17).normal(size=2)
CURVATURE = {"w": np.random.default_rng(18).uniform(0.5, 2, size=(3, 2)), "b": np.array([0.7, 1.9])}
PULL = {"w": np.random.default_rng(19).normal(size=(3, 2)), "b": np.array([-0.4, 0.8])}


def _gradient(name, value):
    """The gradient of sum(c * p^2) / 2 + sum(d * p), the loss `_run` differentiates."""
    return CURVATURE[name] * value + PULL[name]


def _run(optimizer_class, steps=4, **kwargs):
    w, b = bp.nn.Parameter(_t(W0.copy()).data), bp.nn.Parameter(_t(B0.copy()).data)  # updates write in place
    opt = optimizer_class([w, b], **kwargs)
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.0
        for name, p in (("w", w), ("b", b)):
            loss = loss + (_t(CURVATURE[name]) * p * p).sum() * 0.5 + (_t(PULL[name]) * p).sum()
        loss.backward()
        opt.step()
    return {"w": w.numpy(), "b": b.numpy()}


def _sgd_reference(lr, momentum=0.0, nesterov=False, weight_decay=0.0, steps=4):
    params, velocity = {"w": W0.copy(), "b": B0.copy()}, {}
    for _ in range(steps):
        for name, p in params.items():
            g = _gradient(name, p) + weight_decay * p
            if momentum:
                velocity[name] = g if name not in velocity else momentum * velocity[name] + g
                g = g + momentum * velocity[name] if nesterov else velocity[name]
            params[name] = p - lr * g
    return params


def _adam_reference(lr, betas, eps, weight_decay, decoupled, steps=4):
    (beta1, beta2), params = betas, {"w": W0.copy(), "b": B0.copy()}
    m = {name: np.zeros_like(p) for name, p in params.items()}
    v = {name: np.zeros_like(p) for name, p in params.items()}
    for t in range(1, steps + 1):
        for name, p in params.items():
            g = _gradient(name, p)
            if decoupled:
                p = p - lr * weight_decay * p  # AdamW: decay scaled by the learning rate, not the gradient
            else:
                g = g + weight_decay * p  # Adam: L2, through the moments
            m[name] = beta1 * m[name] + (1 - beta1) * g
            v[name] = beta2 * v[name] + (1 - beta2) * g * g
            m_hat, v_hat = m[name] / (1 - beta1**t), v[name] / (1 - beta2**t)
            params[name] = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return params


SGD_SETTINGS = {
    "plain": {"lr": 0.07},
    "momentum": {"lr": 0.07, "momentum": 0.8},
    "nesterov": {"lr": 0.05, "momentum": 0.7, "nesterov": True},
    "nesterov_weight_decay": {"lr": 0.05, "momentum": 0.6, "nesterov": True, "weight_decay": 0.3},
    "momentum_weight_decay": {"lr": 0.04, "momentum": 0.9, "weight_decay": 0.2},
}


@pytest.mark.parametrize("setting", sorted(SGD_SETTINGS))
def test_sgd_steps_match_the_written_out_algorithm(backend, setting):
    kwargs = SGD_SETTINGS[setting]
    got, want = _run(optim.SGD, **kwargs), _sgd_reference(**kwargs)
    for name in want:
        _close(got[name], want[name])


@pytest.mark.parametrize("lr", [0.03, 0.4])
@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_and_adamw_steps_match_the_written_out_algorithm(backend, decoupled, lr):
    kwargs = {"lr": lr, "betas": (0.8, 0.95), "eps": 1e-3, "weight_decay": 0.25}
    got = _run(optim.AdamW if decoupled else optim.Adam, **kwargs)
    want = _adam_reference(decoupled=decoupled, **kwargs)
    for name in want:
        _close(got[name], want[name], rtol=1e-11)


def test_adamws_decay_is_decoupled_and_scaled_by_the_learning_rate():
    """Zero gradient, one step: Adam's L2 decay goes through the moments (a step of about lr),
    AdamW's is p * lr * wd exactly."""
    w = bp.nn.Parameter(_t([[2.0, -4.0, 1.0]]).data)
    opt = optim.AdamW([w], lr=0.1, weight_decay=0.5)
    w.grad = _t(np.zeros((1, 3))).data
    opt.step()
    _close(w.numpy(), np.array([[2.0, -4.0, 1.0]]) * (1 - 0.1 * 0.5))
    coupled = bp.nn.Parameter(_t([[2.0, -4.0, 1.0]]).data)
    opt = optim.Adam([coupled], lr=0.1, weight_decay=0.5)
    coupled.grad = _t(np.zeros((1, 3))).data
    opt.step()
    _close(coupled.numpy(), np.array([[2.0, -4.0, 1.0]]) - 0.1 * np.sign([[2.0, -4.0, 1.0]]), rtol=1e-7)


# --- an epoch's record ---


@pytest.mark.parametrize("n", [37, 8 * 64 + 13])  # a short last batch; more steps than one flush of the tally
def test_the_epoch_loss_and_accuracy_weigh_each_batch_by_its_size(backend, n):
    """fit's record is the mean over samples (a short last batch counts for its size), as the
    per-sample loss of the model evaluated on its own would say: checked by evaluate on the
    model before training with a learning rate that changes nothing measurable."""
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(n, 3)), rng.integers(0, 2, n)
    bp.manual_seed(0)
    model = bp.nn.mlp([3, 4, 2], "tanh", dtype="float64")
    logits = bp.to_numpy(bp.predict(model, x))
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_prob = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    want_loss = -log_prob[np.arange(n), y].mean()
    want_accuracy = (logits.argmax(axis=1) == y).mean()
    opt = bp.optim.SGD(model.parameters(), lr=1e-300)  # steps that leave the weights as they are
    record = bp.fit(model, losses.cross_entropy, opt, (x, y), 1, 8, shuffle=False, verbose=0).epochs[0]
    assert record["loss"] == pytest.approx(want_loss, rel=1e-12)
    assert record["accuracy"] == pytest.approx(want_accuracy, rel=1e-12)
