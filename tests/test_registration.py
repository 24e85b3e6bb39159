"""One way to define an op: `bp.op` registers the function, its Tensor methods and its export, and
lists it for the gradient-check coverage test; the engine tells each backward what it needs and
refuses a backward that returns the wrong number of gradients."""

import numpy as np
import pytest

import backprop as bp
from backprop import ops
from backprop.tensor import Tensor, result


@pytest.fixture
def registry():
    """Ops registered in a test are removed after it (with their Tensor attributes)."""
    before = set(ops.OPS)
    yield
    for name in set(ops.OPS) - before:
        ops.unregister(name)


def test_a_toy_op_registered_through_the_public_path_is_a_full_op(registry, backend):
    @bp.op("softplus", "__invert__")
    def softplus(x):
        """log(1 + exp(x)), stably; its gradient is sigmoid(x)."""
        xp, X = x.xp, x.data
        out = xp.maximum(X, 0.0) + xp.log(1 + xp.exp(-xp.abs(X)))
        return result(out, xp, (x,), lambda g, needs: (g * (xp.tanh(X * 0.5) * 0.5 + 0.5),))

    x = bp.tensor(np.array([[-1.5, 0.3, 2.0], [0.7, -0.2, -3.0]]), dtype="float64", requires_grad=True)
    assert bp.softplus is softplus and "softplus" in ops.OPS  # exported, listed for the coverage test
    np.testing.assert_allclose(x.softplus().numpy(), np.logaddexp(0, x.numpy()), rtol=1e-14, strict=True)
    np.testing.assert_array_equal((~x).numpy(), x.softplus().numpy(), strict=True)
    assert bp.gradcheck(softplus, x) and bp.gradcheck(lambda t: (t * 2.0).softplus() * t, x)


def test_an_unregistered_op_leaves_nothing_behind(registry):
    @bp.op("doubled")
    def doubled(x):
        return result(x.data * 2, x.xp, (x,), lambda g, needs: (g * 2,))

    ops.unregister("doubled")
    assert not hasattr(Tensor, "doubled") and "doubled" not in ops.OPS
    with pytest.raises(AttributeError, match="no attribute 'doubled'"):
        bp.doubled  # noqa: B018


def test_registration_refuses_to_replace_an_op_or_a_tensor_attribute(registry):
    with pytest.raises(ValueError, match="an op named 'exp' is already registered"):

        @bp.op()
        def exp(x):
            return x

    with pytest.raises(ValueError, match="op 'twice': Tensor already has __add__, shape"):

        @bp.op("shape", "__add__")
        def twice(x):
            return x

    assert "twice" not in ops.OPS


def test_the_engine_tells_each_backward_which_inputs_need_a_gradient():
    seen = []

    def spy(a, b):
        return result(a.data * b.data, a.xp, (a, b), lambda g, needs: seen.append(needs) or (g * b.data, g * a.data))

    w = bp.tensor([1.0, 2.0], requires_grad=True)
    spy(w, bp.tensor([3.0, 4.0])).sum().backward()
    spy(bp.tensor([3.0, 4.0]), w).sum().backward()
    spy(w, w).sum().backward()
    assert seen == [(True, False), (False, True), (True, True)]


def test_products_nobody_needs_are_not_computed():
    """`x * c` and `x / c` with a constant c: the constant's gradient would be a wasted full array."""
    calls = []

    class Counting(np.ndarray):  # counts the elementwise operations computed from it
        def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
            calls.append(ufunc.__name__)
            inputs = [np.asarray(i) if isinstance(i, Counting) else i for i in inputs]
            return np.asarray(getattr(ufunc, method)(*inputs, **kwargs)).view(Counting)

    x = bp.tensor(np.arange(1.0, 7.0).reshape(2, 3), requires_grad=True)
    c = Tensor(np.full((2, 3), 4.0))
    y = (x * c) / c
    g = np.ones((2, 3)).view(Counting)
    y.backward(g)
    assert calls == ["divide", "multiply"], calls  # g / c, then (g / c) * c: nothing for c


def test_a_backward_that_returns_too_few_gradients_is_an_error_naming_it():
    def lossy(a, b):
        def backward(g, needs):
            return (g,)  # forgot b

        return result(a.data + b.data, a.xp, (a, b), backward)

    a, b = bp.tensor([1.0], requires_grad=True), bp.tensor([2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match=r"the backward of .*lossy.* returned 1 gradients for 2 inputs"):
        lossy(a, b).sum().backward()


def test_every_reflected_operator_puts_the_plain_value_first(registry):
    @bp.op("__mod__", "__rmod__")
    def remainder(a, b):
        a, b = (t if isinstance(t, Tensor) else bp.tensor(t, dtype="float64") for t in (a, b))
        return result(a.data % b.data, a.xp, (a, b), lambda g, needs: (g, -g * (a.data // b.data)))

    x = bp.tensor([5.0, 7.5], dtype="float64", requires_grad=True)
    np.testing.assert_array_equal((x % 2.0).numpy(), [1.0, 1.5], strict=True)
    np.testing.assert_array_equal((17.0 % x).numpy(), [2.0, 2.0], strict=True)


def test_an_op_may_not_shadow_a_name_backprop_already_has(registry):
    with pytest.raises(ValueError, match="op 'fit': backprop already has an attribute 'fit'"):

        @bp.op()
        def fit(x):
            return x

    assert bp.fit.__module__ == "backprop.train" and "fit" not in ops.OPS
    with pytest.raises(ValueError, match="no op named 'nothing_here' is registered"):
        ops.unregister("nothing_here")


def test_a_backward_written_before_needs_existed_says_what_it_must_take():
    def old_style(a):
        return result(a.data * 3, a.xp, (a,), lambda g: (g * 3,))

    a = bp.tensor([1.0], requires_grad=True)
    with pytest.raises(TypeError, match=r"must take \(g, needs\)"):
        old_style(a).sum().backward()
