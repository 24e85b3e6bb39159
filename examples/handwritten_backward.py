"""Layers with hand-written backward passes (Kaiming init, ReLU, MSE), as in the from-scratch
tutorials, checked against backprop's autodiff engine and, where installed, PyTorch autograd.

    python examples/handwritten_backward.py
"""

import importlib.util

import numpy as np

import backprop as bp


class HandLinear:
    """y = x @ W + b, remembering x for the backward pass."""

    def __init__(self, weight, bias):
        self.weight, self.bias = weight, bias

    def forward(self, x):
        self.x = x
        return x @ self.weight + self.bias

    def backward(self, grad):
        self.grad_weight = self.x.T @ grad
        self.grad_bias = grad.sum(axis=0)
        return grad @ self.weight.T


class HandReLU:
    def forward(self, x):
        self.positive = x > 0
        return np.where(self.positive, x, 0.0)

    def backward(self, grad):
        return np.where(self.positive, grad, 0.0)


def hand_mse(pred, target):
    """Mean squared error and its gradient with respect to `pred`."""
    diff = pred - target
    return float(np.mean(diff**2)), 2 * diff / diff.size


def main(sizes=(20, 32, 16, 5), batch: int = 12, seed: int = 0) -> dict:
    bp.manual_seed(seed)
    with bp.use_backend("numpy"):
        model = bp.nn.mlp(list(sizes), "relu", init="kaiming_normal", dtype="float64")
    rng = np.random.default_rng(seed)
    x, target = rng.normal(size=(batch, sizes[0])), rng.normal(size=(batch, sizes[-1]))
    linears = [layer for layer in model.layers if isinstance(layer, bp.nn.Linear)]
    hand = []
    for i, layer in enumerate(linears):
        hand.append(HandLinear(layer.weight.numpy(), layer.bias.numpy()))
        if i < len(linears) - 1:
            hand.append(HandReLU())

    out = x
    for layer in hand:
        out = layer.forward(out)
    hand_loss, grad = hand_mse(out, target)
    for layer in reversed(hand):
        grad = layer.backward(grad)
    hand_grads = [g for layer in hand if isinstance(layer, HandLinear) for g in (layer.grad_weight, layer.grad_bias)]

    loss = bp.losses.mse_loss(model(bp.tensor(x)), bp.tensor(target))
    engine_grads = [bp.to_numpy(g) for g in bp.grad(loss, model.parameters())]
    figures = {
        "loss_difference": abs(hand_loss - loss.item()),
        "engine_max_difference": max(
            float(np.max(np.abs(a - b))) for a, b in zip(hand_grads, engine_grads, strict=True)
        ),
    }
    if importlib.util.find_spec("torch"):
        figures["torch_max_difference"] = _torch_difference(linears, x, target, hand_grads)
    print("hand-written backward vs engine and PyTorch:", {k: f"{v:.1e}" for k, v in figures.items()})
    return figures


def _torch_difference(linears, x, target, hand_grads) -> float:
    import torch

    params = [torch.tensor(p.numpy(), requires_grad=True) for layer in linears for p in (layer.weight, layer.bias)]
    out = torch.tensor(x)
    for i in range(0, len(params), 2):
        out = out @ params[i] + params[i + 1]
        if i < len(params) - 2:
            out = torch.relu(out)
    torch.nn.functional.mse_loss(out, torch.tensor(target)).backward()
    return max(float(np.max(np.abs(p.grad.numpy() - g))) for p, g in zip(params, hand_grads, strict=True))


if __name__ == "__main__":
    main()
