"""Several steps per call (TrainStep.run_many, fit's steps_per_execution): the same numbers as
one step per call, on every backend; K steps compiled as one call (JAX's lax.scan) are checked
once against single steps, and where they differ or fail they run one by one, with a warning."""

import sys
import warnings

import numpy as np
import pytest

import backprop as bp
from backprop.backends import BACKENDS, BackendEntry
from backprop.errors import ConfigError


def _batches(count, rng, shape=(8, 7)):
    be = bp.get_backend()
    return [(be.asarray(rng.standard_normal(shape)), be.asarray(rng.integers(0, 5, shape[0]))) for _ in range(count)]


def _run(per_call: int, optimizer, hooks=(), count: int = 24, keep_grads: bool = True, stacked: bool = False):
    """Losses, outputs, parameters and gradients after `count` steps taken `per_call` at a time
    (float64); `stacked`: the batches of a call stacked first (`run_stacked`)."""
    bp.manual_seed(1)
    model = bp.nn.mlp([7, 6, 5], "tanh", dtype="float64")
    optimizer = optimizer(model.parameters())
    step = bp.TrainStep(model, bp.losses.cross_entropy, optimizer, gradient_hooks=hooks, keep_grads=keep_grads)
    batches = _batches(count, np.random.default_rng(0))
    losses, outs, modes = [], [], []
    for i in range(0, count, per_call):
        if per_call == 1:
            loss, out = (bp.to_numpy(a)[None] for a in step(*batches[i]))
        elif stacked:
            xp = bp.get_backend().xp
            group = batches[i : i + per_call]
            xs, ys = xp.stack([x for x, _ in group]), xp.stack([y for _, y in group])
            loss, out = (bp.to_numpy(a) for a in step.run_stacked(xs, ys))
        else:
            loss, out = (bp.to_numpy(a) for a in step.run_many(batches[i : i + per_call]))
        losses.append(loss)
        outs.append(out)
        modes.append(step.mode)
    grads = [None if p.grad is None else bp.to_numpy(p.grad) for p in model.parameters()]
    return np.concatenate(losses), np.concatenate(outs), [p.numpy() for p in model.parameters()], grads, modes


OPTIMIZERS = {
    "adam": (lambda ps: bp.optim.Adam(ps, lr=0.01), ()),
    "momentum-clipped": (lambda ps: bp.optim.SGD(ps, lr=0.1, momentum=0.9), (bp.optim.ClipGradNorm(0.3),)),
}


def _assert_same(got, want, exact: bool):
    for g, w in zip(got[:2] + tuple(got[2]) + tuple(got[3]), want[:2] + tuple(want[2]) + tuple(want[3]), strict=True):
        if exact:
            np.testing.assert_array_equal(g, w, strict=True)
        else:  # XLA compiles the scan on its own: its fusions may round apart
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14, strict=True)


@pytest.mark.parametrize("stacked", [False, True], ids=["run_many", "run_stacked"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_k_steps_a_call_give_what_single_steps_give(backend, name, stacked):
    optimizer, hooks = OPTIMIZERS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error", bp.CaptureWarning)
        many = _run(4, optimizer, hooks, stacked=stacked)
    one = _run(1, optimizer, hooks)
    compiled = BACKENDS[backend].compiles_steps
    _assert_same(tuple(many[:4]), tuple(one[:4]), exact=not compiled)
    assert ("jit-scan" in many[4]) == compiled, many[4]
    if stacked:  # the same compiled call as run_many's, on the same stack
        _assert_same(tuple(many[:4]), tuple(_run(4, optimizer, hooks)[:4]), exact=True)


@pytest.mark.parametrize(
    "xs, ys, message",
    [
        ((8,), (2, 8), r"inputs must have an axis of steps and then a batch axis, got \(8,\)"),
        ((2, 8, 7), (2,), r"targets must have an axis of steps and then a batch axis, got \(2,\)"),
        ((3, 8, 7), (2, 8), r"inputs \(3, 8, 7\) and targets \(2, 8\) need one leading length"),
        ((0, 8, 7), (0, 8), r"inputs \(0, 8, 7\) and targets \(0, 8\) need one leading length"),
    ],
)
def test_run_stacked_refuses_batches_without_a_common_axis_of_steps(xs, ys, message):
    model = bp.nn.mlp([7, 5], None, dtype="float64")
    step = bp.TrainStep(model, bp.losses.cross_entropy, bp.optim.SGD(model.parameters(), lr=0.1))
    before = model.layers[0].weight.numpy().copy()
    with pytest.raises(ValueError, match=message):
        step.run_stacked(np.zeros(xs), np.zeros(ys, dtype=np.int64))
    np.testing.assert_array_equal(model.layers[0].weight.numpy(), before)  # nothing ran
    assert model.layers[0].weight.grad is None and step.optimizer.steps == 0


def test_k_steps_that_keep_no_gradients_carry_none_and_give_what_single_steps_give(backend):
    optimizer, hooks = OPTIMIZERS["momentum-clipped"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", bp.CaptureWarning)
        many = _run(4, optimizer, hooks, keep_grads=False)
    one = _run(1, optimizer, hooks)
    compiled = BACKENDS[backend].compiles_steps
    _assert_same(tuple(many[:3]) + ([],), tuple(one[:3]) + ([],), exact=not compiled)
    assert many[3] == [None] * 4 and all(g is not None for g in one[3])
    assert ("jit-scan" in many[4]) == compiled, many[4]


def _python_scan(step):
    """A stand-in for a compiled multi-step call, on any backend: the same contract, in Python."""

    def steps(state, grads, numbers, xs, ys):
        xp = bp.backend.namespace_of(xs)
        losses, outs = [], []
        for k in range(xs.shape[0]):
            state, grads, loss, out = step(state, [n[k] for n in numbers], xs[k, ...], ys[k, ...])
            losses.append(loss)
            outs.append(out)
        return state, grads, xp.stack(losses), xp.stack(outs)

    return steps


def _python_compile_steps(entry, step, donate_state=False):
    """`BackendEntry.compile_steps` as `_python_scan` (which consumes nothing)."""
    return _python_scan(step)


def test_the_multi_step_protocol_on_every_backend(backend, monkeypatch):
    """What JAX compiles (ScanReplay: stacked numbers, carried gradients, stacked results), run as
    a Python loop on this backend: the same numbers as single steps."""
    monkeypatch.setattr(type(BACKENDS[backend]), "compile_steps", _python_compile_steps)
    monkeypatch.setattr(type(BACKENDS[backend]), "compiles_steps", True)
    optimizer, hooks = OPTIMIZERS["adam"]
    many = _run(4, optimizer, hooks)
    assert many[4][-1] == "jit-scan", many[4]
    _assert_same(tuple(many[:4]), tuple(_run(1, optimizer, hooks)[:4]), exact=BACKENDS[backend].capture != "jit")


def test_steps_that_differ_as_one_call_run_one_by_one_with_a_warning(monkeypatch):
    def wrong(self, step, donate_state=False):
        steps = _python_scan(step)
        return lambda state, grads, numbers, xs, ys: steps(state, grads, numbers, xs * 1.5, ys)

    monkeypatch.setattr(BackendEntry, "compile_steps", wrong)
    monkeypatch.setattr(BackendEntry, "compiles_steps", True)
    optimizer, _ = OPTIMIZERS["adam"]
    with pytest.warns(bp.CaptureWarning, match="4 steps one by one: they differ from single steps") as caught:
        many = _run(4, optimizer)
    assert [w.filename for w in caught] == [__file__]  # where run_many was called
    with pytest.warns(bp.CaptureWarning, match="4 steps one by one") as caught:
        _run(4, optimizer, stacked=True)
    assert [w.filename for w in caught] == [__file__]
    assert "jit-scan" not in many[4]
    _assert_same(tuple(many[:4]), tuple(_run(1, optimizer)[:4]), exact=True)


@pytest.mark.parametrize("per_call", [3, 5])
def test_fit_with_steps_per_execution_trains_as_one_step_per_call(backend, per_call):
    """The same weights and history, to the last bit where replays are exact: more than 64 batches
    (the losses are summed 64 steps at a time, and a group of K steps straddles the 64th)."""
    x, y = bp.data.spirals(203)  # 67 batches of 3 and one of 2

    def run(k):
        bp.manual_seed(0)
        model = bp.nn.mlp([2, 16, 2], "tanh", dtype="float32")  # float32: a sum split elsewhere rounds otherwise
        opt = bp.optim.Adam(model.parameters(), lr=0.01)
        history = bp.fit(model, "cross_entropy", opt, (x, y), epochs=2, batch_size=3, verbose=0, capture=True,
                         steps_per_execution=k)  # fmt: skip
        return history, [p.numpy() for p in model.parameters()]

    (history, weights), (expected_history, expected) = run(per_call), run(1)
    exact = BACKENDS[backend].capture != "jit"
    for got, want in zip(weights, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=0 if exact else 1e-4, atol=0 if exact else 1e-5)
    for got, want in zip(history.epochs, expected_history.epochs, strict=True):
        assert got["loss"] == want["loss"] if exact else got["loss"] == pytest.approx(want["loss"], rel=1e-4)
        assert got["accuracy"] == want["accuracy"] if exact else abs(got["accuracy"] - want["accuracy"]) < 0.02


@pytest.mark.parametrize("bad", [0, -2, 1.5, "4", True])
def test_fit_refuses_a_steps_per_execution_that_is_not_a_positive_integer(bad):
    model = bp.nn.mlp([2, 3, 2], "tanh")
    with pytest.raises(ConfigError, match="steps_per_execution"):
        bp.fit(model, "cross_entropy", bp.optim.SGD(model.parameters(), lr=0.1), bp.data.spirals(8), epochs=1,
               steps_per_execution=bad, verbose=0)  # fmt: skip


def test_fit_takes_small_numpy_integers_as_the_numbers_they_are():
    """np.int8(3) * 100 wraps around (to 44), np.uint8(100) * 3 too: fit counts with Python ints."""
    x, y = bp.data.spirals(400)  # 8 batches of 100 an epoch

    def run(epochs, batch_size, k):
        bp.manual_seed(0)
        model = bp.nn.mlp([2, 8, 2], "tanh", dtype="float64")
        opt = bp.optim.SGD(model.parameters(), lr=0.1)
        history = bp.fit(model, "cross_entropy", opt, (x, y), epochs=epochs, batch_size=batch_size, verbose=0,
                         steps_per_execution=k)  # fmt: skip
        return len(history), opt.steps, [p.numpy() for p in model.parameters()]

    epochs, steps, weights = run(np.uint8(2), np.uint8(100), np.int8(3))
    expected_epochs, expected_steps, expected = run(2, 100, 3)
    assert (epochs, steps) == (expected_epochs, expected_steps) == (2, 16)
    for got, want in zip(weights, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert len(bp.data.Batches(x[:300], y[:300], batch_size=np.uint8(100))) == 3  # 300 % uint8(100) overflowed
    groups = bp.data.Batches(x, y, batch_size=100, shuffle=False).groups(np.int8(3))  # 3 * 100 wrapped to 44
    assert [tuple(inputs.shape) for inputs, _, _ in groups] == [(3, 100, 2), (3, 100, 2), (100, 2), (100, 2)]
    model = bp.nn.mlp([2, 2], None, dtype="float64")
    history = bp.fit(model, "cross_entropy", bp.optim.SGD(model.parameters(), lr=0.1), (x[:4], y[:4]),
                     epochs=np.int8(127), batch_size=4, verbose=0)  # fmt: skip
    assert len(history) == 127  # np.int8(127) + 1 is -128: no epoch ran


def test_run_many_refuses_no_batches_and_batches_that_differ():
    model = bp.nn.mlp([7, 5], None, dtype="float64")
    step = bp.TrainStep(model, bp.losses.cross_entropy, bp.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="at least one"):
        step.run_many([])
    rng = np.random.default_rng(0)
    batches = [*_batches(2, rng), *_batches(1, rng, shape=(3, 7))]
    with pytest.raises(ValueError, match=r"batch 2 is \(3, 7\) float64 and \(3,\) int64, batch 0 \(8, 7\) float64"):
        step.run_many(batches)
    x, y = batches[0]
    for bad, message in (([(x, y, y)], "batch 0 is 3 items"), ([(x, y), x], "batch 1 is a ndarray"),
                         ([(x,)], "batch 0 is 1 items")):  # fmt: skip
        with pytest.raises(ValueError, match=f"{message}, not an \\(inputs, targets\\) pair"):
            step.run_many(bad)
    assert model.layers[0].weight.grad is None and step.optimizer.steps == 0  # nothing ran


def test_a_step_of_the_loop_that_raises_says_how_many_steps_before_it_were_taken():
    bp.manual_seed(1)
    model = bp.nn.mlp([7, 6, 5], "tanh", dtype="float64")
    step = bp.TrainStep(model, bp.losses.cross_entropy, bp.optim.Adam(model.parameters()), capture=False)
    rng = np.random.default_rng(0)
    xs, ys = rng.standard_normal((5, 8, 7)), rng.integers(0, 5, (5, 8))
    ys[2, 0] = 7  # step 3 of 5: a label out of range
    with pytest.raises(ValueError, match="labels must be in 0..4") as caught:
        step.run_stacked(xs, ys)
    assert step.optimizer.steps == 2  # as five calls would leave it
    if sys.version_info >= (3, 11):  # exceptions take notes from 3.11
        assert caught.value.__notes__ == ["(step 3 of 5 of this call; the 2 before it were taken)"]


@pytest.mark.parametrize("per_call", [1, 4])
def test_a_nan_that_the_eager_step_gives_too_is_no_reason_to_stop_replaying(backend, per_call):
    """Replays are checked against eager steps: NaN where both have it is agreement."""
    be = bp.get_backend()
    bp.manual_seed(1)
    model = bp.nn.mlp([7, 6, 5], "tanh", dtype="float64")
    step = bp.TrainStep(model, bp.losses.cross_entropy, bp.optim.SGD(model.parameters(), lr=0.1))
    rng = np.random.default_rng(0)
    xs, ys = rng.standard_normal((6, per_call, 8, 7)), rng.integers(0, 5, (6, per_call, 8))
    xs[0, -1, 0, 0] = np.nan  # NaN parameters from the first call on, in every check
    with warnings.catch_warnings():
        warnings.simplefilter("error", bp.CaptureWarning)
        for x, y in zip(xs, ys, strict=True):
            if per_call == 1:
                step(be.asarray(x[0]), be.asarray(y[0]))
            else:
                step.run_stacked(be.asarray(x), be.asarray(y))
    assert step.capture and step.mode != "eager"


def test_run_many_keeps_each_steps_results_where_replays_hand_out_buffers(backend, monkeypatch):
    """A CUDA graph's loss and outputs are its own buffers, overwritten by the next launch: the
    stacked results must still be each step's (a stand-in graph, on the CPU)."""
    from test_step import _stand_in_graph_capture

    entry = BACKENDS[backend]
    if not entry.mutable or entry.capture == "cuda-graph":
        pytest.skip(f"the stand-in writes into arrays ({backend}'s are immutable or have real graphs)")
    monkeypatch.setattr(entry, "capture", "cuda-graph")
    monkeypatch.setattr(entry, "capture_graph", _stand_in_graph_capture)
    optimizer, _ = OPTIMIZERS["adam"]
    many = _run(8, optimizer)
    assert "cuda-graph" in many[4], many[4]
    monkeypatch.undo()
    _assert_same(tuple(many[:4]), tuple(_run(1, optimizer)[:4]), exact=True)


def test_an_interrupt_while_k_steps_are_checked_leaves_no_step_counted(monkeypatch):
    def interrupted(self, step, donate_state=False):
        def steps(*args):
            raise KeyboardInterrupt

        return steps

    monkeypatch.setattr(BackendEntry, "compile_steps", interrupted)
    monkeypatch.setattr(BackendEntry, "compiles_steps", True)
    bp.manual_seed(1)
    model = bp.nn.mlp([7, 5], None, dtype="float64")
    adam = bp.optim.Adam(model.parameters(), lr=0.01)
    step = bp.TrainStep(model, bp.losses.cross_entropy, adam)
    batches = _batches(8, np.random.default_rng(0))
    step.run_many(batches[:4])  # warm-up, record, check, replay
    before = adam.steps, [p.numpy().copy() for p in model.parameters()]
    with pytest.raises(KeyboardInterrupt):
        step.run_many(batches[4:])  # the K-step call is checked here: it is interrupted
    assert adam.steps == before[0]
    for p, kept in zip(model.parameters(), before[1], strict=True):
        np.testing.assert_array_equal(p.numpy(), kept)


def test_an_interrupt_once_k_steps_have_run_leaves_them_done_and_counted(backend, monkeypatch):
    """Steps count once their results are the state: an interrupt that arrives while the K steps'
    results are taken (the compiled call has run) still installs them all, and counts K."""
    from test_step import _interrupted_once

    monkeypatch.setattr(type(BACKENDS[backend]), "compile_steps", _python_compile_steps)
    monkeypatch.setattr(type(BACKENDS[backend]), "compiles_steps", True)

    def train(interrupt: bool):
        bp.manual_seed(1)
        model = bp.nn.mlp([7, 6, 5], "tanh", dtype="float64")
        step = bp.TrainStep(model, bp.losses.cross_entropy, bp.optim.Adam(model.parameters(), lr=0.01))
        batches = _batches(16, np.random.default_rng(0))
        for i in range(0, 12, 4):  # two warm-ups, record, check; then the K-step call, checked; replayed
            step.run_many(batches[i : i + 4])
        assert step.mode == "jit-scan"
        if interrupt:
            calls = []
            with monkeypatch.context() as patch:
                patch.setattr(step.function, "take_outputs", _interrupted_once(step.function, model, calls))
                with pytest.raises(KeyboardInterrupt):
                    step.run_many(batches[12:16])
            assert len(calls) == 2
        else:
            step.run_many(batches[12:16])
        return step.optimizer.steps, [p.numpy() for p in model.parameters()]

    interrupted, plain = train(True), train(False)
    assert interrupted[0] == plain[0] == 16
    for got, want in zip(interrupted[1], plain[1], strict=True):
        np.testing.assert_array_equal(got, want, strict=True)


def test_fit_casts_floating_data_to_the_models_dtype_and_leaves_integers_alone():
    from backprop.train import _pair

    x32, ids = np.ones((4, 2), dtype=np.float32), np.arange(4)
    inputs, targets = _pair((x32, np.ones(4, dtype=np.float32)), "the data", "float64")
    assert inputs.dtype == np.float64 and targets.dtype == np.float64
    inputs, targets = _pair((ids, ids), "the data", "float64")  # token ids, class labels
    assert inputs.dtype == ids.dtype and targets.dtype == ids.dtype


def test_k_steps_follow_a_learning_rate_changed_between_calls(backend):
    # a call's stacked numbers are made again when they change (a schedule between calls), and
    # taken as they are when they do not (a constant lr)
    def run(per_call):
        bp.manual_seed(1)
        model = bp.nn.mlp([7, 6, 5], "tanh", dtype="float64")
        opt = bp.optim.SGD(model.parameters(), lr=0.1)
        step = bp.TrainStep(model, bp.losses.cross_entropy, opt, keep_grads=False)
        batches = _batches(24, np.random.default_rng(0))
        for i in range(0, 24, per_call):
            if i == 12:
                opt.lr = 0.05
            step.run_many(batches[i : i + per_call]) if per_call > 1 else step(*batches[i])
        return [p.numpy() for p in model.parameters()], step.mode

    (many, mode), (one, _) = run(4), run(1)
    assert ("jit-scan" == mode) == BACKENDS[backend].compiles_steps, mode
    for got, want in zip(many, one, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


class _BufferedSGD(bp.optim.SGD):  # its lr is a host array that a schedule changes in place
    def numbers(self):
        if not hasattr(self, "buffer"):
            self.buffer = np.array(0.1)
        return {"lr": self.buffer}


@pytest.mark.parametrize("per_call", [1, 4])
def test_step_numbers_given_as_an_array_changed_in_place_reach_the_replays(backend, per_call):
    # numbers are taken again only while they are Python numbers that compare equal: an array
    # compares equal to itself after an in-place change
    if backend not in ("numpy", "jax"):
        pytest.skip(f"{backend}'s eager ops take no NumPy array as an operand")

    def run(capture):
        bp.manual_seed(1)
        model = bp.nn.mlp([7, 6, 5], "tanh", dtype="float64")
        opt = _BufferedSGD(model.parameters(), lr=0.1)
        step = bp.TrainStep(model, bp.losses.cross_entropy, opt, keep_grads=False, capture=capture)
        batches = _batches(24, np.random.default_rng(0))
        for i in range(0, 24, per_call):
            if i == 16:
                opt.buffer[...] = 0.02
            step.run_many(batches[i : i + per_call]) if per_call > 1 else step(*batches[i])
        return [p.numpy() for p in model.parameters()], step.mode

    (replayed, mode), (eager, _) = run(True), run(False)
    assert mode != "eager", mode
    for got, want in zip(replayed, eager, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_k_step_and_single_calls_consume_only_the_state_either_returned(backend):
    """Where the entry donates (JAX), a K-step call consumes the state as a single replay does:
    the arrays the last call of either kind returned, and a copy of any other (yours survive)."""
    entry = BACKENDS[backend]
    if not (entry.donates and entry.compiles_steps):
        pytest.skip(f"{backend}'s compiled steps consume no inputs, or it runs K steps one by one")
    bp.manual_seed(1)
    model = bp.nn.mlp([7, 6, 5], "tanh", dtype="float64")
    step = bp.TrainStep(model, bp.losses.cross_entropy, bp.optim.Adam(model.parameters(), lr=0.01))
    batches = _batches(40, np.random.default_rng(0))
    for i in range(0, 12, 4):  # warm-up, record and check the single step; then the K steps, checked
        step.run_many(batches[i : i + 4])
    weight = model.parameters()[0]
    returned = weight.data
    step.run_many(batches[12:16])  # the K-step replay
    assert step.mode == "jit-scan" and returned.is_deleted()
    returned = weight.data
    step(*batches[16])  # a single replay after a K-step call: takes what that call returned
    assert step.mode == "jit" and returned.is_deleted()
    mine = bp.get_backend().asarray(bp.to_numpy(weight.data))
    weight.data = mine
    step.run_many(batches[17:21])
    assert step.mode == "jit-scan" and not mine.is_deleted()  # copied first
    kept = bp.to_numpy(mine)
    returned = weight.data
    step.run_many(batches[21:25])
    assert returned.is_deleted()
    np.testing.assert_array_equal(bp.to_numpy(mine), kept, strict=True)
    assert all(not p.data.is_deleted() for p in model.parameters())
    assert all(not a.is_deleted() for a in step.optimizer.state_arrays())
