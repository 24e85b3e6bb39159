"""Losses: gradients (central differences on every backend), values against PyTorch, errors."""

import importlib.util

import numpy as np
import pytest

import backprop as bp
from backprop import losses

rng = np.random.default_rng(3)
LOGITS = rng.normal(size=(5, 4)) * 2
LABELS = np.array([3, 0, 1, 3, 2])
ONE_HOT = np.eye(4)[LABELS]
PROBS = rng.uniform(0.05, 0.95, (5, 4))
TARGETS = rng.uniform(0, 1, (5, 4))

CASES = {
    "quadratic": (losses.quadratic_loss, PROBS, TARGETS),
    "mse": (losses.mse_loss, PROBS, TARGETS),
    "bce": (losses.binary_cross_entropy, PROBS, TARGETS),
    "bce_logits": (losses.binary_cross_entropy_with_logits, LOGITS, TARGETS),
    "cross_entropy_labels": (losses.cross_entropy, LOGITS, LABELS),
    "cross_entropy_one_hot": (losses.cross_entropy, LOGITS, ONE_HOT),
    "nll": (losses.nll_loss, np.log(PROBS / PROBS.sum(1, keepdims=True)), LABELS),
}


def _target(host):
    return bp.tensor(host, dtype="float64") if host.dtype.kind == "f" else bp.tensor(host)


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_gradients(backend, name):
    fn, pred, target = CASES[name]
    x = bp.tensor(pred, dtype="float64", requires_grad=True)
    assert bp.gradcheck(lambda p: fn(p, _target(target)), x)


def test_kl_sparsity_and_l2_gradients(backend):
    hidden = bp.tensor(rng.uniform(0.02, 0.3, (6, 4)), dtype="float64", requires_grad=True)
    assert bp.gradcheck(lambda a: losses.kl_sparsity(a, rho=0.05), hidden)
    w = bp.tensor(rng.normal(size=(3, 2)), dtype="float64", requires_grad=True)
    b = bp.tensor(rng.normal(size=2), dtype="float64", requires_grad=True)
    assert bp.gradcheck(lambda w, b: losses.l2_penalty([w, b], 0.3), w, b)
    assert losses.l2_penalty([w, b], 0.3).item() == pytest.approx(0.15 * float((w.numpy() ** 2).sum()))


def test_quadratic_cost_convention():
    pred, target = bp.tensor([[1.0, 2.0], [0.0, 0.0]]), bp.tensor([[0.0, 0.0], [3.0, 0.0]])
    assert losses.quadratic_loss(pred, target).item() == pytest.approx((1 + 4 + 9) / (2 * 2))  # 1/(2N) sum
    assert losses.mse_loss(pred, target).item() == pytest.approx((1 + 4 + 9) / 4)  # mean over elements


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_loss_values_match_pytorch():
    import torch
    import torch.nn.functional as F

    def t(a):
        return torch.tensor(a)

    expected = {
        "mse": F.mse_loss(t(PROBS), t(TARGETS)),
        "bce": F.binary_cross_entropy(t(PROBS), t(TARGETS)),
        "bce_logits": F.binary_cross_entropy_with_logits(t(LOGITS), t(TARGETS)),
        "cross_entropy_labels": F.cross_entropy(t(LOGITS), t(LABELS)),
        "cross_entropy_one_hot": F.cross_entropy(t(LOGITS), t(ONE_HOT)),
        "nll": F.nll_loss(t(CASES["nll"][1]), t(LABELS)),
    }
    for name, want in expected.items():
        fn, pred, target = CASES[name]
        got = fn(bp.tensor(pred, dtype="float64"), _target(target)).item()
        assert got == pytest.approx(want.item(), rel=1e-12), name


def test_bad_targets_are_clear_errors(backend):
    logits = bp.tensor(LOGITS, dtype="float64")
    with pytest.raises(ValueError, match=r"labels must be in 0..3 for 4 outputs, found 0..4"):
        losses.cross_entropy(logits, bp.tensor(np.array([0, 1, 4, 2, 1])))
    with pytest.raises(ValueError, match=r"3 labels for a batch of 5 predictions"):
        losses.cross_entropy(logits, bp.tensor(np.array([0, 1, 2])))
    with pytest.raises(
        ValueError, match=r"quadratic_loss: prediction has shape \(5, 4\) but target has shape \(5, 3\)"
    ):
        losses.quadratic_loss(logits, bp.tensor(np.zeros((5, 3))))


def test_one_hot_gives_the_comparison_with_a_range(backend):
    """Each entry's `one_hot` (JAX's, compiled, is a scatter) is the standard's comparison of labels
    with a range: a label outside 0..size-1, negative ones too, gives a row of zeros. A compiled
    step cannot check its labels, so this holds under `jax.jit` as well; and int8 labels may
    stand for more classes than int8 can count."""
    from backprop.backends import BackendEntry, get_entry

    entry = get_entry(backend)
    dtype = bp.tensor([0.0], dtype="float32").dtype
    one_hot = {"entry": entry.one_hot, "standard": lambda *args: BackendEntry.one_hot(entry, *args)}
    if backend == "jax":
        import jax

        one_hot["jit"] = lambda labels, size, dtype: jax.jit(lambda given: entry.one_hot(given, size, dtype))(labels)
    cases = [(np.array([2, 0, -1, 3, 5, 1, -4]), 4), (np.array([100, -1, 3, -128, 127], dtype=np.int8), 200)]
    for host, size in cases:
        expected = np.array([np.arange(size) == label for label in host], dtype=np.float32)
        for how, function in one_hot.items():
            rows = bp.to_numpy(function(bp.tensor(host).data, size, dtype))
            np.testing.assert_array_equal(rows, expected, err_msg=f"{how}, {host.dtype}", strict=True)


def test_every_loss_by_name_has_a_gradient_case():
    checked = {fn for fn, _, _ in CASES.values()}
    assert set(losses.LOSSES.values()) - checked == set(), "losses without a gradient check"
