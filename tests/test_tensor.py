"""The graph: accumulation, freeing, no cycles, deep chains, no_grad, functional grad, dtypes."""

import copy
import gc
import weakref

import numpy as np
import pytest

import backprop as bp
from backprop.tensor import Tensor


def test_quick_start_from_the_readme(backend):
    bp.manual_seed(0)
    x = bp.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    w = bp.randn(2, 3, requires_grad=True)
    (x @ w).tanh().sum().backward()
    assert isinstance(x.grad, type(x.data)) and tuple(x.grad.shape) == (2, 2)
    expected = (1 - np.tanh(x.numpy() @ w.numpy()) ** 2) @ w.numpy().T
    np.testing.assert_allclose(bp.to_numpy(x.grad), expected, rtol=1e-5, strict=True)


def test_gradients_accumulate_across_backward_calls(backend):
    x = bp.tensor([1.0, -2.0, 3.0], dtype="float64", requires_grad=True)
    (x * x).sum().backward()
    (x * 3.0).sum().backward()
    assert bp.to_numpy(x.grad).tolist() == [5.0, -1.0, 9.0]


def test_a_tensor_used_twice_gets_both_contributions(backend):
    x = bp.tensor([2.0, 5.0], dtype="float64", requires_grad=True)
    y = x * 3.0
    (y * y + y).sum().backward()  # d/dx (9x^2 + 3x) = 18x + 3
    assert bp.to_numpy(x.grad).tolist() == [39.0, 93.0]


def test_backward_frees_the_graph_unless_retained(backend):
    x = bp.tensor([1.0, 2.0], dtype="float64", requires_grad=True)
    y = (x.exp() * 2.0).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(bp.to_numpy(x.grad), 4 * np.exp([1.0, 2.0]), rtol=1e-6, strict=True)
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        y.backward()


def test_backward_checks_its_gradient_argument(backend):
    x = bp.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    with pytest.raises(RuntimeError, match=r"one-element output, not shape \(1, 3\)"):
        (x * 2.0).backward()
    with pytest.raises(ValueError, match=r"gradient of shape \(3,\) given for an output of shape \(1, 3\)"):
        (x * 2.0).backward(bp.tensor([1.0, 1.0, 1.0]))
    with pytest.raises(RuntimeError, match="does not require a gradient"):
        bp.tensor([1.0]).backward()


def test_no_reference_cycles_after_backward():
    gc.disable()
    try:
        x = bp.tensor(np.ones((4, 3)), requires_grad=True)
        w = bp.tensor(np.ones((3, 2)) / 3, requires_grad=True)
        hidden = (x @ w).sigmoid()
        loss = bp.log_softmax(hidden * 2.0 - 1.0).sum()
        refs = [weakref.ref(t) for t in (hidden, loss)]
        loss.backward()
        del hidden, loss
        assert [r() for r in refs] == [None, None]
        refs = [weakref.ref(t) for t in ((x * 2.0).tanh(),)]  # a graph never backpropagated
        assert refs[0]() is None
    finally:
        gc.enable()


def test_graph_nodes_die_without_the_cycle_collector_even_when_retained():
    gc.disable()
    try:
        x = bp.tensor([1.0, 2.0], requires_grad=True)
        y = x.exp()
        z = (y * y).sum()
        refs = [weakref.ref(y), weakref.ref(z)]
        z.backward(retain_graph=True)
        del y, z
        assert [r() for r in refs] == [None, None]
    finally:
        gc.enable()


def test_a_chain_of_100000_ops_backpropagates():
    x = bp.tensor([0.5], dtype="float64", requires_grad=True)
    y = x
    for _ in range(100_000):
        y = y * 1.0 + 0.0
    y.backward(bp.tensor([2.0], dtype="float64"))
    assert bp.to_numpy(x.grad).tolist() == [2.0]
    del y  # and the freed chain is released without recursion trouble


def test_a_shared_node_collects_every_gradient_before_passing_it_on(backend):
    # h feeds a child made at once and one made 50 ops later, through a chain of its own:
    # h's gradient is complete only once both are done, whatever order they were made in
    x = bp.tensor([0.5, -1.5, 2.0], dtype="float64", requires_grad=True)
    h = x * x
    early = h * 3.0
    late = h
    for _ in range(50):
        late = late * 1.0 + 0.0
    side = (x * 2.0).sum()  # a second path from x, made last
    loss = (early * late).sum() + side
    upstream = 0.7
    loss.backward(bp.tensor(upstream, dtype="float64"))
    xs = np.array([0.5, -1.5, 2.0])
    # loss = sum(3 h^2) + 2 sum(x) with h = x^2: d/dx = 12 x^3 + 2
    np.testing.assert_allclose(bp.to_numpy(x.grad), upstream * (12 * xs**3 + 2), rtol=1e-12)


def test_two_nodes_made_at_once_both_pass_their_gradients(backend):
    x = bp.tensor(1.0, dtype="float64", requires_grad=True)
    y = x * 2.0
    twin = copy.copy(y)  # the same node twice: one creation number for two tensors
    (y + twin).backward()
    assert float(bp.to_numpy(x.grad)) == 4.0


def test_the_graph_keeps_which_inputs_needed_a_gradient_when_it_was_made(backend):
    # as in PyTorch: flipping requires_grad after the forward pass does not change that pass's graph
    w = bp.tensor([1.0, 2.0], dtype="float64", requires_grad=True)
    c = bp.tensor([3.0, 4.0], dtype="float64")
    y = (w * c).sum()
    c.requires_grad_()
    w.requires_grad_(False)
    y.backward()
    assert bp.to_numpy(w.grad).tolist() == [3.0, 4.0]
    assert c.grad is None


def test_no_graph_under_no_grad_or_without_inputs_needing_one(backend):
    w = bp.tensor([1.0, 2.0], requires_grad=True)
    with bp.no_grad():
        assert not bp.is_grad_enabled()
        y = w * 2.0
    assert bp.is_grad_enabled()
    assert not y.requires_grad and y.is_leaf
    z = bp.tensor([1.0]) * 2.0
    assert not z.requires_grad and z.is_leaf

    @bp.no_grad()
    def step(t):
        return t * 3.0

    assert not step(w).requires_grad


def test_functional_grad_leaves_dot_grad_alone(backend):
    x = bp.tensor([1.0, 2.0, 3.0], dtype="float64", requires_grad=True)
    unused = bp.tensor([4.0, 5.0], dtype="float64", requires_grad=True)
    hidden = x * x
    gx, gh, gu = bp.grad((hidden * x).sum(), [x, hidden, unused])
    assert bp.to_numpy(gx).tolist() == [3.0, 12.0, 27.0]  # d/dx x^3
    assert bp.to_numpy(gh).tolist() == [1.0, 2.0, 3.0]
    assert bp.to_numpy(gu).tolist() == [0.0, 0.0]
    assert x.grad is None and unused.grad is None


def test_python_scalars_keep_the_tensor_dtype(backend):
    for dtype in ("float32", "float64"):
        x = bp.tensor([1.0, 2.0], dtype=dtype, requires_grad=True)
        y = (2.0 * x + 1 - 0.5) / 3.0**1 * 1.5
        y = 1.0 - y**2.0
        assert str(y.dtype).endswith(dtype)
        y.sum().backward()
        assert str(x.grad.dtype).endswith(dtype)


def test_only_floating_tensors_can_require_gradients(backend):
    with pytest.raises(TypeError, match="only floating-point tensors can require gradients"):
        bp.tensor([1, 2, 3], requires_grad=True)


def test_basic_indexing_only(backend):
    x = bp.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    with pytest.raises(TypeError, match=r"use bp.take"):
        x[[0, 1]]


def test_linear_names_the_mismatched_shapes(backend):
    x, w = bp.zeros(4, 3), bp.zeros(5, 2)
    with pytest.raises(ValueError, match=r"input of shape \(4, 3\) does not fit a weight of shape \(5, 2\)"):
        bp.linear(x, w)


def test_tensor_helpers(backend):
    x = bp.tensor([[1.5, -2.0, 3.0]], requires_grad=True)
    assert x.shape == (1, 3) and x.ndim == 2 and x.size == 3 and len(x) == 1
    assert x.sum().item() == 2.5
    assert isinstance(x.numpy(), np.ndarray)
    assert not x.detach().requires_grad
    assert "requires_grad=True" in repr(x)
    with pytest.raises(ValueError, match="one element"):
        x.item()
    assert isinstance(x > 0.0, Tensor) and bp.to_numpy((x > 0.0).data).tolist() == [[True, False, True]]


@pytest.mark.parametrize("dtype, size, picked", [("uint8", 256, [0, 17, 255, 17]), ("int8", 300, [-1, 5, -128, 127])])
def test_take_by_narrow_integer_indices_picks_and_adds_up_as_numpy_does(backend, dtype, size, picked):
    """uint8 pixels into a 256-entry table; int8 indices, negative ones too, into 300 rows (JAX
    counted an int8 -1 from the end in int8, and 300 does not fit int8 in backward)."""
    table = np.linspace(-1.0, 2.0, size * 3).reshape(size, 3)
    rows = np.array(picked, dtype=np.int64)
    x = bp.tensor(table, requires_grad=True)
    out = x.take(bp.tensor(np.array(picked, dtype=dtype)).data, axis=0)
    (out * out).sum().backward()
    want = np.zeros_like(table)
    np.add.at(want, rows, 2 * table[rows])
    np.testing.assert_allclose(out.numpy(), table[rows], rtol=1e-6)
    np.testing.assert_allclose(bp.to_numpy(x.grad), want, rtol=1e-6)
