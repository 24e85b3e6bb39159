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


def test_state_arrays_are_read_and_replaced_in_a_fixed_order(backend):
    w = bp.nn.Parameter(bp.tensor([1.0, -2.0], dtype="float64").data)
    b = bp.nn.Parameter(bp.tensor([0.5], dtype="float64").data)
    opt = optim.Adam([w, b], lr=0.1)
    assert opt.state_names() == ((), ()) and opt.state_arrays() == []
    for _ in range(2):
        opt.zero_grad()
        ((w * w).sum() + (b * 3.0).sum()).backward()
        opt.step()
    assert opt.steps == 2 and opt.state_names() == (("m", "v"), ("m", "v"))
    arrays = opt.state_arrays()
    assert [tuple(a.shape) for a in arrays] == [(2,), (2,), (1,), (1,)]
    saved = opt.snapshot()
    opt.load_state_arrays([a * 0 for a in arrays])
    assert all(float(bp.to_numpy(a).sum()) == 0 for a in opt.state_arrays())
    opt.restore(saved)
    assert opt.steps == 2
    for got, want in zip(opt.state_arrays(), arrays, strict=True):
        np.testing.assert_array_equal(bp.to_numpy(got), bp.to_numpy(want), strict=True)
    with pytest.raises(ValueError, match="3 state arrays given for an Adam state of 4"):
        opt.load_state_arrays(arrays[:3])
    with pytest.raises(ValueError, match="5 state arrays given for an Adam state of 4"):
        opt.load_state_arrays([*arrays, arrays[0]])


def test_start_step_counts_and_gives_the_numbers_of_that_step():
    opt = optim.Adam([bp.nn.Parameter(bp.zeros(1).data)], lr=0.1, betas=(0.5, 0.75))
    numbers = opt.start_step()
    assert opt.steps == 1 and numbers["lr"] == 0.1
    assert numbers["step_size"] == pytest.approx(0.1 * np.sqrt(1 - 0.75) / (1 - 0.5))


@needs_torch
def test_clip_grad_norm_follows_pytorch(backend):
    import torch

    rng = np.random.default_rng(2)
    x, t, w0, b0 = rng.normal(size=(5, 3)), rng.normal(size=(5, 2)), rng.normal(size=(3, 2)), rng.normal(size=2)
    w, b = bp.nn.Parameter(bp.tensor(w0, dtype="float64").data), bp.nn.Parameter(bp.tensor(b0, dtype="float64").data)
    tw, tb = torch.tensor(w0, requires_grad=True), torch.tensor(b0, requires_grad=True)
    ours, theirs = optim.SGD([w, b], lr=0.1, momentum=0.9), torch.optim.SGD([tw, tb], lr=0.1, momentum=0.9)
    clip = optim.ClipGradNorm(0.5)
    for _ in range(6):
        ours.zero_grad()
        (((bp.tensor(x, dtype="float64") @ w + b - bp.tensor(t, dtype="float64")) ** 2).sum()).backward()
        w.grad, b.grad = clip([w.grad, b.grad])
        ours.step()
        theirs.zero_grad()
        ((torch.tensor(x) @ tw + tb - torch.tensor(t)) ** 2).sum().backward()
        torch.nn.utils.clip_grad_norm_([tw, tb], 0.5)
        theirs.step()
    np.testing.assert_allclose(w.numpy(), tw.detach().numpy(), rtol=1e-10, strict=True)
    np.testing.assert_allclose(b.numpy(), tb.detach().numpy(), rtol=1e-10, strict=True)
    with pytest.raises(ValueError, match="max_norm must be positive, got 0"):
        optim.ClipGradNorm(0)
