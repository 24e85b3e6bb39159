"""Optimizers: the same trajectory as torch.optim, state round trips, bad arguments."""

import importlib.util

import numpy as np
import pytest

import backprop as bp
from backprop import optim

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")

CONFIGS = {
    "sgd": (optim.SGD, "SGD", {"lr": 0.1}),
    "sgd_momentum_wd": (optim.SGD, "SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
    "sgd_nesterov": (optim.SGD, "SGD", {"lr": 0.05, "momentum": 0.8, "nesterov": True}),
    "adam": (optim.Adam, "Adam", {"lr": 0.01, "weight_decay": 0.1}),
    "adamw": (optim.AdamW, "AdamW", {"lr": 0.01, "weight_decay": 0.1}),
}


@needs_torch
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_trajectory_matches_pytorch(backend, name):
    import torch

    ours_cls, torch_name, kwargs = CONFIGS[name]
    rng = np.random.default_rng(0)
    x, t, w0, b0 = rng.normal(size=(4, 3)), rng.normal(size=(4, 2)), rng.normal(size=(3, 2)), rng.normal(size=2)
    w, b = bp.nn.Parameter(bp.tensor(w0, dtype="float64").data), bp.nn.Parameter(bp.tensor(b0, dtype="float64").data)
    tw, tb = torch.tensor(w0, requires_grad=True), torch.tensor(b0, requires_grad=True)
    ours, theirs = ours_cls([w, b], **kwargs), getattr(torch.optim, torch_name)([tw, tb], **kwargs)
    for _ in range(6):
        ours.zero_grad()
        (((bp.tensor(x, dtype="float64") @ w + b - bp.tensor(t, dtype="float64")) ** 2).sum()).backward()
        ours.step()
        theirs.zero_grad()
        ((torch.tensor(x) @ tw + tb - torch.tensor(t)) ** 2).sum().backward()
        theirs.step()
    np.testing.assert_allclose(w.numpy(), tw.detach().numpy(), rtol=1e-10, strict=True)
    np.testing.assert_allclose(b.numpy(), tb.detach().numpy(), rtol=1e-10, strict=True)


def test_state_dict_round_trip(backend):
    w = bp.nn.Parameter(bp.tensor([1.0, -2.0, 0.5], dtype="float64").data)
    opt = optim.Adam([w], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        (w * w).sum().backward()
        opt.step()
    state = opt.state_dict()
    clone_w = bp.nn.Parameter(w.data)
    clone = optim.Adam([clone_w], lr=0.5)
    clone.load_state_dict(state)
    assert clone.lr == 0.1 and clone.steps == 3
    np.testing.assert_array_equal(bp.to_numpy(clone.state[0]["m"]), state["state"][0]["m"], strict=True)


def test_bad_arguments():
    w = bp.nn.Parameter(bp.zeros(2).data)
    with pytest.raises(ValueError, match="got no parameters"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="learning rate must be positive, got -1"):
        optim.SGD([w], lr=-1)
    with pytest.raises(ValueError, match="Nesterov momentum needs momentum > 0"):
        optim.SGD([w], lr=0.1, nesterov=True)
