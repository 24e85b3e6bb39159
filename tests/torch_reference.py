"""The cases' vocabulary (backprop's op names and keywords) in PyTorch, for parity tests."""

import torch


def _dims(axis):
    return tuple(axis) if isinstance(axis, (tuple, list)) else axis


class TorchOps:
    @staticmethod
    def linear(x, w, b=None, activation=None):
        out = x @ w if b is None else x @ w + b
        return out if activation is None else getattr(torch, activation)(out)

    permute = staticmethod(lambda a, axes: a.permute(*axes))
    transpose = staticmethod(lambda a, i, j: a.transpose(i, j))
    reshape = staticmethod(lambda a, shape: a.reshape(shape))
    broadcast_to = staticmethod(lambda a, shape: a.expand(shape))
    exp, log, sqrt, abs, tanh, sigmoid, relu = (torch.exp, torch.log, torch.sqrt, torch.abs, torch.tanh,
                                                torch.sigmoid, torch.relu)  # fmt: skip
    leaky_relu = staticmethod(lambda a, slope=0.01: torch.nn.functional.leaky_relu(a, slope))
    softmax = staticmethod(lambda a, axis=-1: torch.softmax(a, dim=axis))
    log_softmax = staticmethod(lambda a, axis=-1: torch.log_softmax(a, dim=axis))
    maximum, minimum, where = torch.maximum, torch.minimum, torch.where
    clip = staticmethod(lambda a, lo=None, hi=None: torch.clamp(a, lo, hi))
    astype = staticmethod(lambda a, dtype: a.to(getattr(torch, dtype)))
    take = staticmethod(lambda a, idx, axis=0: torch.index_select(a, axis, torch.tensor(idx) % a.shape[axis]))
    concat = staticmethod(lambda ts, axis=0: torch.cat(ts, dim=axis))
    stack = staticmethod(lambda ts, axis=0: torch.stack(ts, dim=axis))

    @staticmethod
    def sum(a, axis=None, keepdims=False):
        return a.sum() if axis is None and not keepdims else a.sum(dim=_dims(axis), keepdim=keepdims)

    @staticmethod
    def mean(a, axis=None, keepdims=False):
        return a.mean() if axis is None and not keepdims else a.mean(dim=_dims(axis), keepdim=keepdims)

    @staticmethod
    def max(a, axis=None, keepdims=False):
        return a.amax() if axis is None and not keepdims else a.amax(dim=_dims(axis) or (), keepdim=keepdims)

    @staticmethod
    def logsumexp(a, axis=None, keepdims=False):
        dims = tuple(range(a.ndim)) if axis is None else _dims(axis)
        return torch.logsumexp(a, dim=dims, keepdim=keepdims)
