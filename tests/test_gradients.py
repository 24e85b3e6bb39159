"""Every public op, gradchecked on every backend in float64 and float32, and against PyTorch."""

import importlib.util

import numpy as np
import pytest
from cases import CASES

import backprop as bp
from backprop.ops import OPS


def test_every_public_op_has_a_gradient_case():
    checked = {case.op for case in CASES.values()}
    assert set(OPS) - checked == set(), "ops without a gradient check"
    assert checked - set(OPS) == set(), "cases naming an unknown op"
    assert all(getattr(bp, name) is function for name, function in OPS.items())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_matches_central_differences(backend, name, dtype):
    case = CASES[name]
    inputs = case.inputs(dtype)
    out = case.fn(bp, *inputs)
    if case.op != "astype":
        assert str(out.dtype).endswith(dtype), f"{name} turned {dtype} into {out.dtype}"
    assert bp.gradcheck(lambda *ts: case.fn(bp, *ts), *inputs)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
@pytest.mark.parametrize("name", sorted(CASES))
def test_values_and_gradients_match_pytorch(backend, name):
    import torch
    from torch_reference import TorchOps

    case = CASES[name]
    host = case.host_inputs()
    ours = [bp.tensor(a, dtype="float64", requires_grad=True) for a in host]
    theirs = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in host]
    out, expected = case.fn(bp, *ours), case.fn(TorchOps, *theirs)
    upstream = np.random.default_rng(7).standard_normal(tuple(expected.shape))

    got_grads = bp.grad(out, ours, grad_output=bp.tensor(upstream, dtype="float64"))
    expected.backward(torch.tensor(upstream))
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=1e-10, atol=1e-12, strict=True)
    for got, want in zip(got_grads, theirs, strict=True):
        np.testing.assert_allclose(bp.to_numpy(got), want.grad.numpy(), rtol=1e-10, atol=1e-12, strict=True)


def test_gradcheck_catches_a_wrong_gradient_and_names_the_element():
    from backprop.tensor import result

    def wrong_square(t):  # gradient off by a factor at one element only
        xp = t.xp

        def backward(g, needs):
            scale = xp.ones_like(t.data)
            scale[1, 2] = 3.0
            return (2 * g * t.data * scale,)

        return result(t.data * t.data, xp, (t,), backward)

    x = bp.tensor(np.arange(1.0, 13.0).reshape(3, 4) / 7, dtype="float64", requires_grad=True)
    with pytest.raises(bp.GradcheckError, match=r"input 0: gradient differs at index \(1, 2\)"):
        bp.gradcheck(wrong_square, x)


def test_gradcheck_catches_a_transposed_gradient_on_a_square_looking_case():
    from backprop.tensor import result

    def bad_sum_rows(t):  # sums axis 1 but sends the gradient as if it were axis 0
        xp = t.xp
        return result(xp.sum(t.data, axis=1), xp, (t,), lambda g, needs: (xp.broadcast_to(g[None, :], (3, 3)),))

    x = bp.tensor(np.arange(9.0).reshape(3, 3) / 5, dtype="float64", requires_grad=True)
    with pytest.raises(bp.GradcheckError):
        bp.gradcheck(bad_sum_rows, x)


def test_ties_in_max_share_the_gradient(backend):
    x = bp.tensor([[1.0, 3.0, 3.0], [2.0, 0.0, -1.0]], dtype="float64", requires_grad=True)
    bp.max(x, axis=1).sum().backward()
    assert bp.to_numpy(x.grad).tolist() == [[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]]


def test_take_with_repeated_indices_adds_gradients(backend):
    x = bp.tensor(np.arange(6.0).reshape(2, 3), dtype="float64", requires_grad=True)
    weights = bp.tensor([[1.0, 10.0, 100.0, 1000.0]] * 2, dtype="float64")
    (bp.take(x, [2, 0, 2, 2], axis=1) * weights).sum().backward()
    assert bp.to_numpy(x.grad).tolist() == [[10.0, 0.0, 1101.0]] * 2


def test_generic_scatter_add_path_matches_native(rng):
    from backprop.backends import BACKENDS, BackendEntry

    grad = rng.standard_normal((3, 5, 2))
    idx = np.array([4, 0, 4, 1, 0])
    native = BACKENDS["numpy"].scatter_add(grad, idx, 1, 6)
    if importlib.util.find_spec("array_api_strict") is None:
        pytest.skip("array_api_strict is not installed")
    import array_api_strict as xs

    generic = BackendEntry.scatter_add(BACKENDS["array_api_strict"], xs.asarray(grad), xs.asarray(idx), 1, 6)
    np.testing.assert_allclose(bp.to_numpy(generic), native, rtol=1e-12, strict=True)
    assert native.shape == (3, 6, 2)


def test_logsumexp_and_softmax_are_stable_for_large_inputs(backend):
    x = bp.tensor([[1000.0, 1001.0, 999.0], [-1000.0, -1002.0, -1001.0]], dtype="float64", requires_grad=True)
    lse = bp.logsumexp(x, axis=1)
    expected = np.array([1001 + np.log(1 + np.exp(-1) + np.exp(-2)), -1000 + np.log(1 + np.exp(-2) + np.exp(-1))])
    np.testing.assert_allclose(lse.numpy(), expected, rtol=1e-12, strict=True)
    assert np.isfinite(bp.log_softmax(x).numpy()).all()
    assert np.isfinite(bp.to_numpy(bp.grad(bp.softmax(x)[:, 0].sum(), [x])[0])).all()
    assert np.isfinite(bp.sigmoid(bp.tensor([-800.0, 800.0], dtype="float64")).numpy()).all()
