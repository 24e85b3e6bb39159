"""The replay optimizer (backprop.optimize): each pass computes bit for bit what the recorded
program computes, on every backend, and the passes do what they say (read in the source)."""

import re

import numpy as np
import pytest
from cases import CASES

import backprop as bp
from backprop import optimize as opt
from backprop.backends import BACKENDS
from backprop.trace import Program, trace

GENERIC = [opt.fold_constants, opt.drop_identities, opt.eliminate_common, opt.eliminate_dead]
FAST = [opt.lower_reductions, opt.scalars_as_arrays, opt.widen_scalars, opt.reuse_buffers]


def _arrays(host):
    be = bp.get_backend()
    return [be.asarray(np.array(a, copy=True)) for a in host]  # arrays of their own, also on NumPy


def _passes(backend):
    """(name, trace -> trace) for each pass alone and for all of them, as this backend gets them."""
    fast = BACKENDS[backend].fast_path()
    singles = [(p.__name__, p) for p in GENERIC]
    if fast is not None:
        singles += [(p.__name__, lambda t, p=p: p(t, fast)) for p in FAST]
    return [*singles, ("all", lambda t: opt.optimize(t, fast))]


def _same(got, want):
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(bp.to_numpy(g), bp.to_numpy(w), strict=True)


def _close(got, want):  # float64
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(bp.to_numpy(g), bp.to_numpy(w), rtol=1e-12, atol=1e-14, strict=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_op_and_its_gradient_optimized_gives_the_recorded_programs_bits(backend, name):
    case = CASES[name]

    def f(*arrays):
        *inputs, upstream = arrays
        tensors = [bp.Tensor(a, requires_grad=True) for a in inputs]
        out = case.fn(bp, *tensors)
        return [out.data, *bp.grad(out, tensors, grad_output=upstream)]

    rng = np.random.default_rng(5)
    shape = tuple(case.fn(bp, *(bp.tensor(a, dtype="float64") for a in case.host_inputs(0))).shape)
    program, _ = trace(f, _arrays([*case.host_inputs(0), rng.standard_normal(shape)]))
    host = [*case.host_inputs(1), rng.standard_normal(shape)]
    want = program(*_arrays(host))
    for _, optimized in _passes(backend):
        inputs = _arrays(host)
        _same(Program(optimized(program.trace))(*inputs), want)
        _same(inputs, _arrays(host))  # no input was written into


def _train(backend, activation, loss, optimizer, hooks=(), **step_options):
    """Parameters, gradients and losses of 6 steps of a small model (float64) on `backend`."""
    bp.manual_seed(4)
    rng = np.random.default_rng(0)
    model = bp.nn.mlp([7, 12, 5], activation, "sigmoid" if loss == "quadratic" else None, dtype="float64")
    optim = optimizer(model.parameters())
    step = bp.TrainStep(model, bp.losses.LOSSES[loss], optim, gradient_hooks=hooks, **step_options)
    losses = []
    for _ in range(6):
        x = bp.tensor(rng.standard_normal((8, 7)))
        labels = rng.integers(0, 5, 8)
        y = bp.tensor(np.eye(5)[labels]) if loss == "quadratic" else bp.tensor(labels)
        losses.append(bp.to_numpy(step(x, y)[0]))
    grads = [None if p.grad is None else bp.to_numpy(p.grad) for p in model.parameters()]
    return [p.numpy() for p in model.parameters()], grads, losses, step


STEPS = {
    "sigmoid-quadratic-sgd": ("sigmoid", "quadratic", lambda ps: bp.optim.SGD(ps, lr=0.5), ()),
    "relu-cross_entropy-adam": ("relu", "cross_entropy", lambda ps: bp.optim.Adam(ps, lr=0.01, weight_decay=0.1), ()),
    "tanh-momentum-clipped": (
        "tanh",
        "cross_entropy",
        lambda ps: bp.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
        (bp.optim.ClipGradNorm(0.5),),
    ),
}


@pytest.mark.parametrize("name", sorted(STEPS))
def test_an_optimized_training_step_gives_the_unoptimized_replays_bits_and_the_eager_steps(backend, name):
    activation, loss, optimizer, hooks = STEPS[name]
    optimized = _train(backend, activation, loss, optimizer, hooks)
    assert optimized[3].mode in ("traced", "jit") and optimized[3].program is not None
    if backend == "numpy" and activation == "relu":  # maximum(z, 0.0) beside a full array (widen_scalars)
        assert "float64 array of shape (8, 12), every element 0.0" in str(optimized[3].program)
    recorded = _train(backend, activation, loss, optimizer, hooks, optimize=False)
    eager = _train(backend, activation, loss, optimizer, hooks, capture=False)
    compare = _close if BACKENDS[backend].capture == "jit" else _same  # XLA fuses each program its own way
    for got, want in zip(optimized[:3], recorded[:3], strict=True):
        compare(got, want)
    for got, want in zip(optimized[:3], eager[:3], strict=True):
        _close(got, want)


def test_the_program_of_a_step_reads_as_the_step():
    *_, step = _train("numpy", "sigmoid", "quadratic", lambda ps: bp.optim.SGD(ps, lr=0.5))
    source = str(step.program)
    assert source.startswith("def program(") and source == step.program.source
    assert "tanh(v" in source and "out=v" in source and "add_reduce(" in source  # the NumPy fast path
    assert "xp_asarray" not in source  # folded or dropped
    assert "# c0 = " in source  # constants are listed
    eager = bp.TrainStep(step.model, step.loss, step.optimizer, capture=False)
    eager(np.zeros((8, 7)), np.zeros((8, 5)))
    assert eager.program is None


def test_a_step_that_keeps_no_gradients_returns_none_and_updates_in_their_place():
    sgd = lambda ps: bp.optim.SGD(ps, lr=0.5)  # noqa: E731
    *_, kept = _train("numpy", "sigmoid", "quadratic", sgd)
    *_, dropped = _train("numpy", "sigmoid", "quadratic", sgd, keep_grads=False)
    returned = lambda step: step.program.source.splitlines()[-1]  # noqa: E731
    assert returned(kept).count("v") == 4 + 2 and returned(dropped).count("v") == 2  # gradients, loss, outputs
    lr = f"a{len(kept.params)}"  # the first input after the parameters
    scaled = lambda step, text: [line for line in str(step.program).splitlines() if text in line]  # noqa: E731
    assert len(scaled(kept, f" = {lr} * v")) == 4  # lr * g: a new array, as the kept gradient is returned
    momentum = lambda ps: bp.optim.SGD(ps, lr=0.5, momentum=0.5)  # noqa: E731
    *_, with_momentum = _train("numpy", "sigmoid", "quadratic", momentum, keep_grads=False)
    velocity_lr = f"a{len(with_momentum.function.state())}"  # after the parameters and velocities
    assert len(scaled(with_momentum, f" = {velocity_lr} * a")) == 4  # lr * velocity: momentum scales its own
    # plain SGD without kept gradients starts backward from lr: the updates subtract the gradients as they come
    assert not scaled(dropped, f" * {lr}") and not scaled(dropped, f" *= {lr}") and scaled(dropped, f"{lr} / ")
    assert len([line for line in str(dropped.program).splitlines() if re.fullmatch(r" +a\d -= v\d+.*", line)]) == 4
    assert all(p.grad is None for p in dropped.params) and all(p.grad is not None for p in kept.params)


def _adam_step(calls: int):
    """A captured Adam step on a linear model, after `calls` calls; (step, adam, x, y)."""
    bp.manual_seed(0)
    model = bp.nn.mlp([4, 3], None, dtype="float64")
    adam = bp.optim.Adam(model.parameters(), lr=0.1)
    step = bp.TrainStep(model, bp.losses.quadratic_loss, adam)
    x, y = np.ones((2, 4)), np.zeros((2, 3))
    for _ in range(calls):
        step(x, y)
    return step, adam, x, y


def test_optimizer_state_is_updated_in_place_but_never_an_array_the_caller_gave():
    step, adam, x, y = _adam_step(3)  # warm-up, record, check
    given = adam.state_arrays()
    kept = [a.copy() for a in given]
    step(x, y)  # the first replay: copies the state it was given, then owns it
    mine = adam.state_arrays()
    assert all(a is not b for a, b in zip(mine, given, strict=True))
    _same(given, kept)
    step(x, y)
    assert all(a is b for a, b in zip(adam.state_arrays(), mine, strict=True))  # in place from now on
    assert "a4 *= " in str(step.program) or "a4 += " in str(step.program), step.program


# --- each pass, read in the source (NumPy) ---


def _optimized(f, host, *passes, fast=True, donated=()):
    program, _ = trace(f, [np.array(h) for h in host])
    record = program.trace
    path = BACKENDS["numpy"].fast_path()
    for p in passes:
        record = p(record, path, donated) if p is opt.reuse_buffers else p(record, path) if p in FAST else p(record)
    optimized = Program(record)
    inputs = [np.array(h) for h in host]
    _same(optimized(*inputs), program(*[np.array(h) for h in host]))
    if not donated:
        _same(inputs, host)
    return optimized.source.splitlines()[1:]


def test_fold_constants_computes_constant_chains_once_but_not_what_is_returned_or_written():
    def f(a):
        xp = a.__array_namespace__()
        scale = xp.asarray(1.0, dtype=a.dtype) / 4  # folded
        returned = xp.zeros(2)  # returned: each call must get an array of its own
        written = xp.zeros(3)
        written[0] = a[0]  # written into: must be made anew each call
        return [a * scale, returned, written]

    lines = _optimized(f, [np.arange(3.0)], opt.fold_constants)
    assert lines[0] == "    # c0 = 0.25 (float64)", lines
    assert not any("xp_asarray" in line for line in lines) and sum("xp_zeros" in line for line in lines) == 2


def test_drop_identities_and_eliminate_dead():
    def f(a):
        xp = a.__array_namespace__()
        same = xp.asarray(a)  # the very array: dropped
        xp.exp(a)  # unused: dropped
        return [xp.tanh(same)]

    assert _optimized(f, [np.arange(3.0)], opt.drop_identities, opt.eliminate_dead) == [
        "    v2 = xp_tanh(a0)",
        "    return (v2,)",
    ]


def test_eliminate_common_merges_repeats_but_not_across_a_write():
    def f(a, b):
        xp = a.__array_namespace__()
        t = xp.tanh(a) + xp.tanh(a)  # one tanh
        c = b * 2.0
        before = c * 3.0
        c -= 1.0  # c changes: the same expression after it is another value
        after = c * 3.0
        return [t, before, after]

    lines = _optimized(f, [np.arange(3.0), np.ones(3)], opt.eliminate_common)
    assert sum("xp_tanh" in line for line in lines) == 1
    assert sum("* 3.0" in line for line in lines) == 2


def test_lower_reductions_keeps_the_standards_meaning_of_no_axis():
    def f(a):
        xp = a.__array_namespace__()
        return [xp.sum(a), xp.sum(a, axis=0), xp.max(a, axis=-1, keepdims=True)]

    lines = _optimized(f, [np.arange(6.0).reshape(2, 3)], opt.lower_reductions)
    assert lines[:3] == [
        "    v0 = add_reduce(a0, axis=None)",
        "    v1 = add_reduce(a0, axis=0)",
        "    v2 = maximum_reduce(a0, axis=-1, keepdims=True)",
    ]


def test_a_lowered_reduction_is_still_a_pure_call_with_a_new_result():
    def f(a, b):
        xp = a.__array_namespace__()
        s = xp.sum(a * 2.0, axis=0)  # lowered: a new array, so the product may be written into it
        return [s * b, a]

    passes = (opt.lower_reductions, opt.reuse_buffers)
    lines = _optimized(f, [np.arange(6.0).reshape(2, 3) + 0.5, np.linspace(1.0, 2.0, 3)], *passes)
    assert "    v1 = add_reduce(v0, axis=0); del v0" in lines and "    v1 *= a1" in lines, lines


def test_scalars_as_arrays_keeps_the_dtype_and_leaves_integers_alone():
    def f(a, n):
        return [a * 0.1 + 1, n * 3]

    lines = _optimized(f, [np.linspace(0, 1, 5, dtype=np.float32), np.arange(5)], opt.scalars_as_arrays)
    assert "    # c0 = 0.1 (float32)" in lines and "    # c1 = 1.0 (float32)" in lines
    assert "    v2 = a1 * 3" in lines


def test_widen_scalars_puts_an_array_beside_maximum_and_minimum_with_the_same_bits():
    def f(a, small):
        xp = a.__array_namespace__()
        kept = a.T * 1.0  # column-major, and used again below: maximum makes a new array, which
        beside_kept = xp.maximum(kept, 0.0)  # stays column-major beside the scalar alone
        transposed = xp.maximum(a.T / 1.0, 0.0)  # written into its operand: column-major all along
        return [  # temporaries of the same values, each computed its own way (not merged as one)
            xp.maximum(a * 1.0, 0.0),
            xp.minimum(0.5, a / 1.0),
            xp.maximum(a - 0.0, -0.0),
            xp.maximum(small * 1.0, 0.0),  # 12 elements: the scalar's loop costs as little as an array's
            beside_kept,
            beside_kept + kept,
            transposed,
            xp.sum(transposed, axis=0),  # adds in the transposed result's memory order
        ]

    rng = np.random.default_rng(3)
    special = [np.nan, -np.nan, -0.0, 0.0, np.inf, -np.inf, 1e-40, -1e-40, 0.5, -0.5]
    a = rng.permutation(np.concatenate([special * 4, rng.standard_normal(88)])).astype(np.float32).reshape(8, 16)
    small = a[:3, :4].copy()
    passes = (opt.scalars_as_arrays, opt.reuse_buffers, opt.widen_scalars)
    source = "\n".join(_optimized(f, [a, small], *passes))
    for value, shape in (("0.0", (16, 8)), ("0.0", (8, 16)), ("0.5", (8, 16)), ("-0.0", (8, 16))):
        assert f"float32 array of shape {shape}, every element {value}" in source, source
    zero = re.search(r"# (c\d+) = 0.0 \(float32\)", source).group(1)  # the 0-d one
    assert re.search(rf"= xp_maximum\(v\d+, {zero}\)", source), source  # beside `kept`, which lives on
    assert re.search(rf"maximum\(v\d+, {zero}, out=v\d+\)", source), source  # beside `small`
    program, _ = trace(f, [a, small])
    widened = Program(opt.optimize(program.trace, BACKENDS["numpy"].fast_path()))
    for got, want in zip(widened(a, small), program(a, small), strict=True):
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))  # NaN and -0.0 too
        assert got.flags.c_contiguous == want.flags.c_contiguous
    constants = [c for c in widened._globals.values() if isinstance(c, np.ndarray) and c.ndim == 2]
    assert len(constants) == 4 and not any(c.flags.writeable for c in constants)


def test_reuse_buffers_writes_only_into_temporaries_that_die():
    def f(a, b):
        xp = a.__array_namespace__()
        h = a * 2.0  # a temporary
        view = h.T  # a view of it, used after h's last element-wise use
        g = 1.0 - h  # h is still seen through `view`: not written into
        g = xp.tanh(g)  # g dies here: tanh(g, out=g)
        k = 1.0 - g  # reflected: subtract(1.0, g, out=g)
        wide = k + b  # k broadcasts to b's shape: a new array
        return [view @ wide, a, k * 0]  # `a` is returned: never written into

    lines = _optimized(f, [np.ones((3, 3)), np.ones((2, 3, 3))], opt.reuse_buffers)
    assert "    v2 = 1.0 - v0; del v0" in lines and "    tanh(v2, out=v2)" in lines
    assert "    subtract(1.0, v2, out=v2)" in lines and any(" = v2 + a1" in line for line in lines), lines


def test_reuse_buffers_writes_only_into_a_temporary_of_the_results_memory_layout():
    """`f + c` (column-major f, row-major c) is row-major in NumPy: written into f it would be
    column-major, and the sum after it would add in another order (other last bits)."""

    def f(a, b):
        xp = a.__array_namespace__()
        mixed = (a * 1.5) + (b @ xp.eye(6, dtype=b.dtype))  # column-major + row-major: a new row-major array
        alike = (a * 2.0) + (a * 3.0)  # both column-major: written into the first
        return [xp.sum(mixed * mixed), xp.sum(alike * alike)]

    rng = np.random.default_rng(0)
    a = np.asfortranarray(rng.standard_normal((64, 6)).astype("float32") * 3)
    lines = _optimized(f, [a, np.ascontiguousarray(a)], opt.reuse_buffers)
    assert not any(re.match(r" +v0 \+= ", line) for line in lines) and any("+= " in line for line in lines), lines
    program, _ = trace(f, [a, np.ascontiguousarray(a)])
    reused = Program(opt.optimize(program.trace, BACKENDS["numpy"].fast_path()))
    for got, want in zip(reused(a, np.ascontiguousarray(a)), program(a, np.ascontiguousarray(a)), strict=True):
        assert got.tobytes() == want.tobytes()


def test_reuse_buffers_updates_donated_state_in_place():
    def f(m, g):
        return [m * 0.9 + 0.1 * g]

    lines = _optimized(f, [np.ones(3), np.arange(3.0)], opt.reuse_buffers, donated=[0])
    assert lines[:3] == ["    a0 *= 0.9", "    v1 = 0.1 * a1", "    a0 += v1; del v1"], lines


def test_reuse_buffers_leaves_alone_what_an_external_call_was_given():
    from backprop.trace import external

    kept = []

    def keep(array):  # a call that holds on to its input (as a host callback may)
        kept.append(array)
        return array * 1.0

    def f(a):
        h = a * 2.0
        external(keep, h)
        return [h + 1.0]  # h dies here: not written into, `keep` holds it

    lines = _optimized(f, [np.arange(3.0)], opt.reuse_buffers)
    assert "    v2 = v0 + 1.0; del v0" in lines, lines


# --- found by the review's fault campaign: each gave wrong numbers, a crash or a lost capture ---


def _agrees(f, host, backend_arrays=True):
    """The optimized program (every pass this backend gets) gives the recorded program's bits."""
    make = _arrays if backend_arrays else (lambda hs: [np.array(h) for h in hs])
    program, _ = trace(f, make(host))
    fast = BACKENDS[bp.get_backend().name].fast_path()
    optimized = Program(opt.optimize(program.trace, fast))
    _same(optimized(*make(host)), program(*make(host)))
    return optimized


def test_a_value_seen_through_a_view_of_what_a_buffer_stood_for_is_not_overwritten(backend):
    def f(a):
        xp = a.__array_namespace__()
        g = a * 2.0 + 1.0  # held in a's temporary once optimized
        view = g.T
        k = xp.tanh(g)  # must not write into g: `view` is read after it
        return [view + 0.0, k]

    _agrees(f, [np.array([[0.1, 0.2]])])


def test_identities_are_kept_where_an_in_place_operator_rebinds_one_side(backend):
    numpy = backend == "numpy"

    def f(a):
        xp = a.__array_namespace__()
        b = xp.asarray(a)
        b += 1.0  # on immutable arrays this rebinds b alone
        s = xp.sum(a)
        t = s.T if numpy else xp.asarray(s)  # a NumPy scalar's .T is itself
        t += 1.0
        return [a * 2.0, b, s, t]

    _agrees(f, [np.arange(3.0)])


def test_an_identity_of_a_folded_constant_is_left_as_a_call(backend):
    def f(a):
        xp = a.__array_namespace__()
        c = xp.zeros(3, dtype=a.dtype)
        d = xp.astype(c, a.dtype)  # may give c back; c itself is folded
        d += a
        return [d, +c]

    _agrees(f, [np.arange(3.0)])


def test_signed_zeros_are_different_constants(backend):
    def f(a):
        xp = a.__array_namespace__()
        return [a * 0.0, a * -0.0, 1.0 / (a * 0.0), 1.0 / (a * -0.0), xp.maximum(a, 0.0), xp.maximum(a, -0.0)]

    with np.errstate(divide="ignore"):  # 1 / +-0 on purpose
        _agrees(f, [np.array([1.0, -2.0, 0.0])])


def test_a_folded_constant_array_beside_an_operand_does_not_stop_the_passes():
    def f(a):
        xp = a.__array_namespace__()
        return [a * 3.0 + xp.linspace(0.0, 1.0, 3, dtype=a.dtype)]

    assert "c" in _agrees(f, [np.ones(3)], backend_arrays=False).source


def test_a_step_whose_loss_takes_a_mean_is_captured_and_optimized():
    bp.manual_seed(0)
    model = bp.nn.mlp([4, 3], "tanh", dtype="float64")
    step = bp.TrainStep(model, lambda out, y: ((out - y) ** 2).mean(), bp.optim.SGD(model.parameters(), lr=0.1))
    x, y = np.ones((2, 4)), np.zeros((2, 3))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", bp.CaptureWarning)
        for _ in range(5):
            step(x, y)
    assert step.mode == "traced" and "xp_mean(" in str(step.program)


def test_scalars_stay_python_numbers_where_a_function_takes_another_type():
    def f(a):
        xp = a.__array_namespace__()
        return [xp.ldexp(a, 3)]  # the exponent is an integer

    lines = _optimized(f, [np.ones(3, dtype=np.float32)], opt.scalars_as_arrays)
    assert "ldexp(a0, 3)" in "\n".join(lines), lines


def test_an_optimizer_state_dict_taken_earlier_is_not_changed_by_later_replays():
    step, adam, x, y = _adam_step(5)
    saved = adam.state_dict()
    kept = [{k: v.copy() for k, v in s.items()} for s in saved["state"]]
    step(x, y)
    step(x, y)
    for got, want in zip(saved["state"], kept, strict=True):
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
