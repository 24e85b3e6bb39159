"""Losses, each a mean over the batch, most as one node with a fused gradient.

A loss is a scalar, so its upstream gradient `g` is too: gradients scale by `g / N` once, a
scalar operation, rather than multiplying a whole array by `g` and dividing it by N.

Conventions (rows of `pred` are samples; N is the batch size):
- `quadratic_loss` is Nielsen's cost, (1/2N) * sum ||pred - target||^2: the 1/2 cancels the 2 of
  the derivative, so its gradient is (pred - target) / N.
- `mse_loss` is PyTorch's: the mean over every element, without the 1/2.
- cross-entropies average over samples (and, for binary ones, over outputs, like PyTorch).

>>> import backprop as bp
>>> logits = bp.tensor([[2.0, 0.5, -1.0]], requires_grad=True)
>>> round(bp.losses.cross_entropy(logits, bp.tensor([0])).item(), 4)
0.2413
"""

from __future__ import annotations

from backprop import ops
from backprop.backends import backend_of
from backprop.tensor import Tensor, result

_sigmoid, _ = ops.OUTPUT_DERIVATIVES["sigmoid"]  # the one sigmoid formula, on plain arrays


def _data(target, like: Tensor):
    return target.data if isinstance(target, Tensor) else like.xp.asarray(target, device=like.device)


def _check_same_shape(name: str, pred: Tensor, target) -> None:
    if tuple(target.shape) != pred.shape:
        raise ValueError(f"{name}: prediction has shape {pred.shape} but target has shape {tuple(target.shape)}")


def quadratic_loss(pred: Tensor, target) -> Tensor:
    """(1/2N) * sum of squared errors (Nielsen's quadratic cost); gradient (pred - target) / N."""
    xp, T = pred.xp, _data(target, pred)
    _check_same_shape("quadratic_loss", pred, T)
    diff = pred.data - T
    n = pred.shape[0]
    return result(xp.sum(diff * diff) / (2 * n), xp, (pred,), lambda g, needs: (diff * (g / n),))


def mse_loss(pred: Tensor, target) -> Tensor:
    """Mean over all elements of (pred - target)^2 (PyTorch's MSELoss)."""
    xp, T = pred.xp, _data(target, pred)
    _check_same_shape("mse_loss", pred, T)
    diff = pred.data - T
    count = pred.size
    return result(xp.sum(diff * diff) / count, xp, (pred,), lambda g, needs: (diff * (g * (2 / count)),))


def binary_cross_entropy(prob: Tensor, target, eps: float = 1e-12) -> Tensor:
    """Mean of -[t log p + (1-t) log(1-p)] for probabilities `prob` (clipped to [eps, 1-eps])."""
    xp, T = prob.xp, _data(target, prob)
    _check_same_shape("binary_cross_entropy", prob, T)
    P = xp.clip(prob.data, eps, 1 - eps)
    count = prob.size
    loss = -xp.sum(T * xp.log(P) + (1 - T) * xp.log(1 - P)) / count
    return result(loss, xp, (prob,), lambda g, needs: ((P - T) * (g / count) / (P * (1 - P)),))


def binary_cross_entropy_with_logits(logits: Tensor, target) -> Tensor:
    """BCE of sigmoid(logits), computed stably; gradient (sigmoid(z) - t) / count."""
    xp, Z, T = logits.xp, logits.data, _data(target, logits)
    _check_same_shape("binary_cross_entropy_with_logits", logits, T)
    count = logits.size
    loss = xp.sum(xp.maximum(Z, 0.0) - Z * T + xp.log(1 + xp.exp(-xp.abs(Z)))) / count
    return result(loss, xp, (logits,), lambda g, needs: ((_sigmoid(xp, Z) - T) * (g / count),))


def _as_distribution(target, logits: Tensor):
    """Integer labels (N,) become one-hot rows; (N, C) targets are used as given."""
    xp, n_classes = logits.xp, logits.shape[-1]
    T = _data(target, logits)
    if T.ndim == 1:
        if not xp.isdtype(T.dtype, "integral"):
            raise TypeError(f"class labels must be integers, got {T.dtype}")
        if T.shape[0] != logits.shape[0]:
            raise ValueError(f"{T.shape[0]} labels for a batch of {logits.shape[0]} predictions")
        if backend_of(xp).readable(T):  # on a GPU (or in a trace) this check would cost a sync every step
            low, high = int(xp.min(T)), int(xp.max(T))
            if low < 0 or high >= n_classes:
                raise ValueError(f"labels must be in 0..{n_classes - 1} for {n_classes} outputs, found {low}..{high}")
        return xp.astype(T[:, None] == xp.arange(n_classes, device=logits.device)[None, :], logits.dtype)
    _check_same_shape("cross_entropy", logits, T)
    return T


def cross_entropy(logits: Tensor, target) -> Tensor:
    """Softmax cross-entropy from logits, mean over the batch; gradient (softmax - target) / N.

    `target` is integer labels of shape (N,) or a distribution (e.g. one-hot) of shape (N, C).
    """
    xp = logits.xp
    T = _as_distribution(target, logits)
    Z = logits.data
    shifted = Z - xp.max(Z, axis=-1, keepdims=True)
    log_prob = shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))
    n = logits.shape[0]
    loss = -xp.sum(T * log_prob) / n
    return result(loss, xp, (logits,), lambda g, needs: ((xp.exp(log_prob) - T) * (g / n),))


def nll_loss(log_prob: Tensor, target) -> Tensor:
    """Negative log-likelihood of log-probabilities (e.g. from log_softmax), mean over the batch."""
    xp = log_prob.xp
    T = _as_distribution(target, log_prob)
    n = log_prob.shape[0]
    return result(-xp.sum(T * log_prob.data) / n, xp, (log_prob,), lambda g, needs: (T * (-g / n),))


def kl_sparsity(activations: Tensor, rho: float = 0.05) -> Tensor:
    """Sparse-autoencoder penalty: sum_j KL(rho || mean activation of hidden unit j over the batch).

    Activations must lie in (0, 1) (sigmoid units).
    """
    rho_hat = ops.mean(activations, axis=0)
    return ops.sum(rho * ops.log(rho / rho_hat) + (1 - rho) * ops.log((1 - rho) / (1 - rho_hat)))


def l2_penalty(parameters, weight_decay: float) -> Tensor:
    """(weight_decay / 2) * sum of squared weights (matrices only: biases are not decayed)."""
    weights = [p for p in parameters if p.ndim >= 2]
    if not weights:
        raise ValueError("l2_penalty: no weight matrices among the parameters")
    total = ops.sum(weights[0] * weights[0])
    for w in weights[1:]:
        total = total + ops.sum(w * w)
    return total * (weight_decay / 2)


LOSSES = {
    "quadratic": quadratic_loss,
    "mse": mse_loss,
    "bce": binary_cross_entropy,
    "bce_logits": binary_cross_entropy_with_logits,
    "cross_entropy": cross_entropy,
    "nll": nll_loss,
}
