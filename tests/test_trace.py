"""Tracing: a replay computes what the function computes, on new inputs; what cannot be replayed
is an error that says why."""

import numpy as np
import pytest
from cases import CASES

import backprop as bp
from backprop.trace import TraceError, trace


def _backend_arrays(host):
    be = bp.get_backend()
    return [be.asarray(a) for a in host]


def _value_and_gradients(case):
    """f(inputs, upstream) -> [value, gradient of each input], built on the engine."""

    def f(*arrays):
        *inputs, upstream = arrays
        tensors = [bp.Tensor(a, requires_grad=True) for a in inputs]
        out = case.fn(bp, *tensors)
        return [out.data, *bp.grad(out, tensors, grad_output=upstream)]

    return f


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_op_and_its_gradient_replays_on_new_inputs(backend, name):
    case = CASES[name]
    f = _value_and_gradients(case)
    rng = np.random.default_rng(5)
    first, second = case.host_inputs(seed=0), case.host_inputs(seed=1)
    shape = tuple(case.fn(bp, *(bp.tensor(a, dtype="float64") for a in first)).shape)
    program, _ = trace(f, _backend_arrays([*first, rng.standard_normal(shape)]))

    arrays = _backend_arrays([*second, rng.standard_normal(shape)])
    replayed, interpreted, expected = program(*arrays), program.trace.run(*arrays), f(*arrays)
    assert len(replayed) == len(interpreted) == len(expected) == len(case.shapes) + 1
    for got, other, want in zip(replayed, interpreted, expected, strict=True):
        np.testing.assert_allclose(bp.to_numpy(got), bp.to_numpy(want), rtol=1e-12, atol=1e-14, strict=True)
        np.testing.assert_array_equal(bp.to_numpy(other), bp.to_numpy(got), strict=True)


def test_source_is_straight_line_and_frees_intermediates():
    f = lambda a, b: [bp.tanh(bp.Tensor(a) @ bp.Tensor(b)).data * 2.0]
    program, _ = trace(f, [np.ones((2, 3)), np.ones((3, 4))])
    assert program.source.splitlines() == [
        "def program(a0, a1):",
        "    v0 = a0 @ a1",
        "    v1 = xp_tanh(v0); del v0",
        "    v2 = v1 * 2.0; del v1",
        "    return (v2,)",
    ]


def test_operators_literals_in_place_and_indexing(backend):
    def f(a, b):
        xp = bp.backend.namespace_of(a)
        c = (-1.5) * a - 2.0**a + 1 / (b + 3.0)  # reflected operators with signed literals
        c -= 0.25 * b  # in place
        d = xp.zeros((3, 4), dtype=a.dtype)
        if bp.get_backend().entry.mutable:  # immutable arrays: their writes are checked through getitem's gradient
            d[1:, ::2] = c[None, 0, :2]  # indexing with None, slices, an integer; writing through a key
        e = xp.sum(d, axis=(0,), keepdims=True)  # keyword arguments and tuples
        return [c, d, e, xp.max(a, axis=None)]

    host = [np.random.default_rng(0).uniform(0.1, 1, (3, 4)), np.random.default_rng(1).uniform(0.1, 1, (3, 4))]
    program, _ = trace(f, _backend_arrays(host))
    new = _backend_arrays([h[::-1] * 0.5 for h in host])
    for got, want in zip(program(*new), f(*new), strict=True):
        np.testing.assert_allclose(bp.to_numpy(got), bp.to_numpy(want), rtol=1e-12, strict=True)


def test_the_record_is_data_from_which_source_and_lifetimes_are_derived():
    def f(a, b):
        c = a @ b
        c -= 1.0  # in place: rebinds c
        d = bp.backend.namespace_of(a).tanh(c)
        d[0, :] = b[0, :2]  # a write: no output
        return [d * 2.0, c]

    program, _ = trace(f, [np.ones((2, 3)), np.ones((3, 2))])
    calls = program.trace.calls
    assert [call.name or call.function.__name__ for call in calls] == [
        "matmul",
        "isub",
        "xp_tanh",
        "getitem",
        "setitem",
        "mul",
    ]
    matmul, isub, tanh, getitem, setitem, mul = calls
    a0, a1 = program.trace.inputs
    assert matmul.args == (a0, a1) and isub.outputs == matmul.outputs and isub.args[1] == 1.0
    assert tanh.args == matmul.outputs and setitem.outputs == () and setitem.args[0] is tanh.outputs[0]
    assert program.trace.outputs == [mul.outputs[0], matmul.outputs[0]]
    # v2 (b's slice) dies at the write, v1 (tanh) at the product; v0 is returned, a0 and a1 are inputs
    assert [[v.name for v in dead] for dead in program.trace.deaths()] == [[], [], [], [], ["v2"], ["v1"]]
    assert program.source.splitlines()[1:] == [
        "    v0 = a0 @ a1",
        "    v0 -= 1.0",
        "    v1 = xp_tanh(v0)",
        "    v2 = a1[(0, slice(None, 2, None))]",
        "    v1[(0, slice(None, None, None))] = v2; del v2",
        "    v3 = v1 * 2.0; del v1",
        "    return (v3, v0,)",
    ]


def test_backend_helpers_are_recorded_as_calls_of_the_backend():
    """A replay scatters with the backend's own scatter-add (np.add.at), not a stand-in's fallback."""
    from backprop.backends import backend_of

    def f(a):
        t = bp.Tensor(a, requires_grad=True)
        out = bp.take(t, [2, 0, 2], axis=1)[1:, :].sum()
        return bp.grad(out, [t])

    program, _ = trace(f, [np.ones((3, 4))])
    helpers = {call.name: call.function for call in program.trace.calls if call.name in ("set_at", "scatter_add")}
    numpy_entry = backend_of(bp.backend.NUMPY)
    assert helpers == {"set_at": numpy_entry.set_at, "scatter_add": numpy_entry.scatter_add}
    np.testing.assert_array_equal(program(np.ones((3, 4)))[0], [[0, 0, 0, 0], [1, 0, 2, 0], [1, 0, 2, 0]])


def test_the_traced_call_computes_for_real():
    _, results = trace(lambda a: [a * 3.0], [np.arange(3.0)])
    np.testing.assert_array_equal(results[0], [0.0, 3.0, 6.0], strict=True)


@pytest.mark.parametrize(
    "body, message",
    [
        (lambda a: [a * float(a[0])], "read the value of a traced array"),
        (lambda a: [a if a[0] > 0 else -a], "read the value of a traced array"),
        (lambda a: [a + np.ones(3)], r"array of shape \(3,\) that is not an input"),
        (lambda a: [a.sum()], "has no 'sum'"),
        (lambda a: [bp.to_numpy(a)], "read the value of a traced array"),
    ],
)
def test_what_a_replay_cannot_repeat_is_an_error(body, message):
    with pytest.raises(TraceError, match=message):
        trace(body, [np.arange(3.0)])


def test_outputs_must_come_from_the_trace():
    with pytest.raises(TraceError, match="not an input"):
        trace(lambda a: [np.zeros(2)], [np.zeros(2)])


def test_probing_a_traced_array_for_other_attributes_is_false():
    def f(a):
        assert not hasattr(a, "get") and not hasattr(a, "__cuda_array_interface__")
        return [a]

    trace(f, [np.zeros(2)])


def test_an_external_call_of_any_name_compiles_and_cannot_be_shadowed():
    """A lambda (no identifier), a keyword-like name and a name a program gives its own values
    (a0, v1, program) all become globals the program can call."""
    from backprop.trace import external

    def v1(a):
        return a * 3.0

    def program(a):
        return a + 1.0

    def f(a):
        return [external(lambda b: b - 2.0, a), external(v1, a * 2.0), external(program, a)]

    host = np.linspace(0.5, 2.0, 5)
    traced, values = trace(f, [host.copy()])
    for got, want in zip(traced(host.copy()), values, strict=True):
        np.testing.assert_array_equal(got, want, strict=True)
    source = traced.source
    assert "external(a0)" in source and "f_v1(" in source and "f_program(a0)" in source, source
    assert [call.external for call in traced.trace.calls] == [True, False, True, True]  # a0 * 2.0 is not
