"""Property tests: gradients of broadcasting ops come back at each operand's own shape."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

import backprop as bp


def _reference_gradient(shape, broadcast_shape, upstream_times_other):
    """d sum(r * broadcast_to(a) * b) / da, one basis vector of `a` at a time."""
    grad = np.zeros(shape)
    for index in np.ndindex(shape):
        basis = np.zeros(shape)
        basis[index] = 1.0
        grad[index] = np.sum(np.broadcast_to(basis, broadcast_shape) * upstream_times_other)
    return grad


@settings(max_examples=60, deadline=None)
@given(mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3), st.integers(0, 2**16))
def test_mul_and_add_gradients_unbroadcast(shapes, seed):
    rng = np.random.default_rng(seed)
    (shape_a, shape_b), out_shape = shapes.input_shapes, shapes.result_shape
    a_host, b_host = rng.standard_normal(shape_a), rng.standard_normal(shape_b)
    r = rng.standard_normal(out_shape)
    a = bp.tensor(a_host, dtype="float64", requires_grad=True)
    b = bp.tensor(b_host, dtype="float64", requires_grad=True)
    ga, gb = bp.grad(a * b + a, [a, b], grad_output=bp.tensor(r, dtype="float64"))
    b_full, a_full = np.broadcast_to(b_host, out_shape), np.broadcast_to(a_host, out_shape)
    np.testing.assert_allclose(
        bp.to_numpy(ga), _reference_gradient(shape_a, out_shape, r * (b_full + 1)), atol=1e-12, strict=True
    )
    expected_b = _reference_gradient(shape_b, out_shape, r * a_full)
    np.testing.assert_allclose(bp.to_numpy(gb), expected_b, atol=1e-12, strict=True)
