"""The engine hands users gradients they own, and refuses a backward whose inputs an optimizer
step has changed in place since the forward pass (the gradient would be silently wrong)."""

import numpy as np
import pytest

import backprop as bp


def test_gradients_are_writable_and_not_shared_between_inputs(backend):
    a = bp.tensor([1.0, 2.0], dtype="float64", requires_grad=True)
    b = bp.tensor([3.0, 4.0], dtype="float64", requires_grad=True)
    (a + b).sum().backward()  # add passes one array to both; sum's gradient is a broadcast view
    assert a.grad is not b.grad
    xp = bp.get_backend().xp
    if bp.get_backend().name != "jax":  # JAX arrays are immutable: nothing to write
        a.grad[0] = 5.0
        b.grad[...] = b.grad * 2
        np.testing.assert_array_equal(bp.to_numpy(a.grad), [5.0, 1.0], strict=True)
        np.testing.assert_array_equal(bp.to_numpy(b.grad), [2.0, 2.0], strict=True)
    ga, gb = bp.grad((a + b).sum(), [a, b])
    assert ga is not gb and xp.all(ga == gb)


def test_the_upstream_gradient_is_not_handed_back_as_a_leafs_gradient():
    g = np.array([1.0, -2.0])
    x = bp.tensor([1.0, 2.0], dtype="float64", requires_grad=True)
    x.backward(g)
    x.grad *= 3
    np.testing.assert_array_equal(g, [1.0, -2.0], strict=True)


def test_gradients_that_are_views_of_one_array_are_handed_over_as_arrays_of_their_own(backend):
    """reshape's backward gives a view of its upstream gradient: two leaves, or a leaf and the
    caller's gradient, must not end up sharing memory."""
    if not bp.get_backend().entry.mutable:
        pytest.skip(f"{backend}'s arrays are immutable: nothing can be written through a view")
    xp = bp.get_backend().xp
    zero = xp.asarray(0.0, dtype=xp.float64)
    x = bp.tensor(np.arange(6.0).reshape(2, 3), dtype="float64", requires_grad=True)
    given = bp.tensor(np.ones(6), dtype="float64").data
    x.reshape((6,)).backward(given)
    x.grad[...] = zero
    assert float(xp.sum(given)) == 6.0  # the caller's array is untouched
    a, b = (bp.tensor(np.ones((2, 3)), dtype="float64", requires_grad=True) for _ in range(2))
    ((a.reshape((6,)) + b.reshape((6,))) * bp.tensor(np.arange(6.0), dtype="float64")).sum().backward()
    a.grad[...] = zero
    assert float(xp.sum(b.grad)) == 15.0


def test_a_backward_after_an_optimizer_step_changed_its_inputs_in_place_is_refused():
    bp.manual_seed(0)
    model = bp.nn.mlp([3, 4, 2], "tanh", dtype="float64")
    opt = bp.optim.SGD(model.parameters(), lr=0.1)
    loss = model(bp.tensor(np.ones((5, 3)))).sum()
    loss.backward(retain_graph=True)
    opt.step()  # writes into the weights the graph above read
    with pytest.raises(RuntimeError, match=r"an input of linear \(shape \(4, 2\)\) was changed in place"):
        loss.backward()
    opt.zero_grad()
    model(bp.tensor(np.ones((5, 3)))).sum().backward()  # a new forward pass is fine
    opt.step()


def test_a_parameter_the_step_did_not_write_keeps_its_graph_usable():
    """Only the parameters an update wrote are marked: a frozen one's graph stays usable."""
    w = bp.nn.Parameter(bp.tensor([1.0, 2.0], dtype="float64").data)
    frozen = bp.nn.Parameter(bp.tensor([3.0, 4.0], dtype="float64").data)
    opt = bp.optim.SGD([w, frozen], lr=0.1)
    (w * w).sum().backward()
    graph = (frozen * frozen).sum()
    opt.step()
    graph.backward()
    np.testing.assert_array_equal(frozen.grad, [6.0, 8.0], strict=True)
