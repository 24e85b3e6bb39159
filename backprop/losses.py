"""Losses, each a mean over the batch, most as one node with a fused gradient.

A loss is a scalar, so its upstream gradient `g` is too: gradients scale by `g / N` once, a
scalar operation, rather than multiplying a whole array by `g` and dividing it by N.

Conventions (rows of `pred` are samples; N is the batch size):
- `quadratic_loss` is Nielsen's cost, (1/2N) * sum ||pred - target||^2: the 1/2 cancels the 2 of
  the derivative, so its gradient is (pred - target) / N.
- `mse_loss` is PyTorch's: the mean over every element, without the 1/2.
- cross-entropies average over samples (and, for binary ones, over outputs, like PyTorch).
- every loss is finite in float16, float32 and float64 on its whole domain (probabilities in [0, 1],
  finite logits) wherever its exact value fits the dtype: `binary_cross_entropy` clips
  probabilities to [eps, 1 - eps] with eps at least the dtype's machine epsilon (1 - 1e-12 is 1 in
  float32), a class with target weight 0 is never read (0 * -inf would be NaN), and float16 sums
  are taken through `mean` (which backends accumulate in a wider type) so that they do not overflow.

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
    if isinstance(target, Tensor):
        return target.data
    xp = like.xp
    return xp.asarray(backend_of(xp).untracked(target), device=like.data.device)  # device: the standard's attribute


def _sum_over(xp, values, divisor):
    """sum(values) / divisor; in float16 through `mean`, whose wider accumulator does not overflow."""
    if values.dtype == getattr(xp, "float16", None):
        return xp.mean(values) * (_size(values) / divisor)
    return xp.sum(values) / divisor


def _sum_of_squares(xp, diff, divisor):
    """sum(diff ** 2) / divisor; in float16 the squares are taken in float32 (300 ** 2 overflows
    float16), the result given back in float16."""
    if diff.dtype == getattr(xp, "float16", None):
        wide = xp.astype(diff, xp.float32)
        return xp.astype(xp.sum(wide * wide) / divisor, diff.dtype)
    return xp.sum(diff * diff) / divisor


def _size(array) -> int:
    count = 1
    for extent in array.shape:
        count *= extent
    return count


def _check_same_shape(name: str, pred: Tensor, target) -> None:
    if tuple(target.shape) != tuple(pred.data.shape):
        raise ValueError(f"{name}: prediction has shape {pred.shape} but target has shape {tuple(target.shape)}")


def quadratic_loss(pred: Tensor, target) -> Tensor:
    """(1/2N) * sum of squared errors (Nielsen's quadratic cost); gradient (pred - target) / N."""
    xp, T = pred.xp, _data(target, pred)
    _check_same_shape("quadratic_loss", pred, T)
    diff = pred.data - T
    n = pred.data.shape[0]
    return result(_sum_of_squares(xp, diff, 2 * n), xp, (pred,), lambda g, needs: (diff * (g / n),))


def mse_loss(pred: Tensor, target) -> Tensor:
    """Mean over all elements of (pred - target)^2 (PyTorch's MSELoss)."""
    xp, T = pred.xp, _data(target, pred)
    _check_same_shape("mse_loss", pred, T)
    diff = pred.data - T
    count = pred.size
    return result(_sum_of_squares(xp, diff, count), xp, (pred,), lambda g, needs: (diff * (g * (2 / count)),))


def binary_cross_entropy(prob: Tensor, target, eps: float = 1e-12) -> Tensor:
    """Mean of -[t log p + (1-t) log(1-p)] for probabilities `prob`, clipped to [e, 1 - e] where
    e = max(eps, machine epsilon of the dtype): finite for every p in [0, 1], also in float32/16.

    The gradient is (p - t) / (p (1 - p)) / count at the clipped p, also where p was clipped (at
    p = 0 and 1 it points back into the interval, as the unclipped formula would, instead of 0).
    """
    xp, T = prob.xp, _data(target, prob)
    _check_same_shape("binary_cross_entropy", prob, T)
    eps = max(eps, float(xp.finfo(prob.dtype).eps))
    P = ops.clip_array(xp, prob.data, eps, 1 - eps)
    count = prob.size
    loss = -_sum_over(xp, T * xp.log(P) + (1 - T) * xp.log(1 - P), count)
    return result(loss, xp, (prob,), lambda g, needs: ((P - T) * (g / count) / (P * (1 - P)),))


def binary_cross_entropy_with_logits(logits: Tensor, target) -> Tensor:
    """BCE of sigmoid(logits), computed stably; gradient (sigmoid(z) - t) / count."""
    xp, Z, T = logits.xp, logits.data, _data(target, logits)
    _check_same_shape("binary_cross_entropy_with_logits", logits, T)
    count = logits.size
    loss = _sum_over(xp, xp.maximum(Z, 0.0) - Z * T + xp.log1p(xp.exp(-xp.abs(Z))), count)
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
        if T.shape[0] and backend_of(xp).readable(T):  # on a GPU (or in a trace) it would sync every step
            low, high = int(xp.min(T)), int(xp.max(T))
            if low < 0 or high >= n_classes:
                raise ValueError(f"labels must be in 0..{n_classes - 1} for {n_classes} outputs, found {low}..{high}")
        return backend_of(xp).one_hot(T, n_classes, logits.dtype)
    _check_same_shape("cross_entropy", logits, T)
    return T


def cross_entropy(logits: Tensor, target) -> Tensor:
    """Softmax cross-entropy from logits, mean over the batch (PyTorch's `cross_entropy`).

    `target` is integer labels of shape (N,) or target weights of shape (N, C): one-hot rows, or
    soft ones, which need not sum to 1. The gradient is (softmax * rowsum(target) - target) / N,
    which is (softmax - target) / N for labels and for rows that sum to 1.
    """
    xp = logits.xp
    target = _data(target, logits)
    labels = target.ndim == 1
    T = _as_distribution(target, logits)
    Z = logits.data
    shifted = Z - xp.max(Z, axis=-1, keepdims=True)
    log_prob = shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))
    n = logits.shape[0]
    loss = -_sum_over(xp, T * xp.where(T == 0, 0.0, log_prob), n)  # log_prob may be -inf (float16, huge logits)

    def backward(g, needs):
        prob = xp.exp(log_prob)
        weighted = prob if labels else prob * xp.sum(T, axis=-1, keepdims=True)
        return ((weighted - T) * (g / n),)

    return result(loss, xp, (logits,), backward)


def nll_loss(log_prob: Tensor, target) -> Tensor:
    """Negative log-likelihood of log-probabilities (e.g. from log_softmax), mean over the batch.

    A log-probability of -inf (a probability that underflowed to 0) counts only where its target
    weight is not 0: as in PyTorch, only the target classes are read."""
    xp = log_prob.xp
    T = _as_distribution(target, log_prob)
    n = log_prob.shape[0]
    loss = -_sum_over(xp, T * xp.where(T == 0, 0.0, log_prob.data), n)
    return result(loss, xp, (log_prob,), lambda g, needs: (T * (-g / n),))


def kl_sparsity(activations: Tensor, rho: float = 0.05) -> Tensor:
    """Sparse-autoencoder penalty: sum_j KL(rho || mean activation of hidden unit j over the batch).

    Activations must lie in [0, 1] (sigmoid units); mean activations are clipped to [e, 1 - e] with
    e the dtype's machine epsilon, so that saturated units give a large finite penalty, not inf.
    """
    eps = float(activations.xp.finfo(activations.dtype).eps)  # a unit saturated in float32 must not give inf
    rho_hat = ops.clip(ops.mean(activations, axis=0), eps, 1 - eps)
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
