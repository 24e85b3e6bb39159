"""TrainStep: a captured step gives exactly the eager step's numbers, on every backend; what
cannot be captured runs eagerly, with a warning, and loses nothing."""

import itertools
import re
import warnings

import numpy as np
import pytest

import backprop as bp
import backprop.replay
from backprop.backends import BACKENDS
from backprop.tensor import result

OPTIMIZERS = {
    "sgd": lambda params: bp.optim.SGD(params, lr=0.3),
    "nesterov_decay": lambda params: bp.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam": lambda params: bp.optim.Adam(params, lr=0.01, weight_decay=0.001),
    "adamw": lambda params: bp.optim.AdamW(params, lr=0.01),
}
CAPTURED_MODES = {"traced", "jit", "cuda-graph"}


def _batches(loss: str, count: int = 12):
    """Batches of 7 rows, with a batch of 3 every fourth (a second shape to capture)."""
    rng, be = np.random.default_rng(0), bp.get_backend()
    for i in range(count):
        n = 3 if i % 4 == 3 else 7
        x = rng.random((n, 6))
        labels = rng.integers(0, 4, n)
        y = np.eye(4)[labels] if loss == "quadratic" else labels
        yield be.asarray(x), be.asarray(y)


def _train(capture: bool, optimizer: str, loss: str, events=(), model_factory=None):
    """Parameters, last loss and the modes seen after training a small model; `events[i]` runs
    before step i (a schedule, a hyper-parameter change, new weights)."""
    bp.manual_seed(3)
    model = (model_factory or (lambda: bp.nn.mlp([6, 5, 4], "tanh", "sigmoid", dtype="float64")))()
    opt = OPTIMIZERS[optimizer](model.parameters())
    step = bp.TrainStep(model, bp.losses.LOSSES[loss], opt, capture=capture)
    modes = []
    for i, (x, y) in enumerate(_batches(loss)):
        for event in dict(events).get(i, ()):
            event(model, opt)
        value, _ = step(x, y)
        modes.append(step.mode)
    return [p.numpy() for p in model.parameters()], float(bp.to_numpy(value)), modes


def _assert_same_training(a, b, rtol=1e-12):  # float64: XLA's fused rounding (JAX) stays far inside
    for got, want in zip(a[0], b[0], strict=True):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-14, strict=True)
    assert a[1] == pytest.approx(b[1], rel=rtol)


def _captured_as_eager(run, backend) -> list:
    """`run(capture)` -> (parameters, last loss, modes), with capture (no CaptureWarning) and
    without: the same numbers, bit for bit where replays make the library's own calls (XLA
    rounds otherwise); the captured run's modes."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", bp.CaptureWarning)
        captured = run(True)
    eager = run(False)
    if BACKENDS[backend].capture == "jit":
        _assert_same_training(captured, eager)
    else:
        for got, want in zip(captured[0], eager[0], strict=True):
            np.testing.assert_array_equal(got, want, strict=True)
        assert captured[1] == eager[1]
    return captured[2]


def _halve_lr(model, opt):
    opt.lr *= 0.5


def _new_weights(model, opt):
    model.load_state_dict({name: a * 0.9 for name, a in model.state_dict().items()})


@pytest.mark.parametrize("loss", ["quadratic", "cross_entropy"])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_captured_steps_equal_eager_steps(backend, optimizer, loss):
    events = {6: [_halve_lr], 9: [_new_weights]}
    with warnings.catch_warnings():
        warnings.simplefilter("error", bp.CaptureWarning)
        captured = _train(True, optimizer, loss, events)
    _assert_same_training(captured, _train(False, optimizer, loss, events))
    assert set(captured[2][4:]) & CAPTURED_MODES, f"never replayed a capture: {captured[2]}"


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("capture", [True, False])
def test_a_step_that_keeps_no_gradients_trains_the_same_and_leaves_none(backend, capture, optimizer):
    """`keep_grads=False` (fit's steps): the same training, and no `.grad` after any step, whether
    it warmed up, recorded, checked or replayed. Plain SGD then starts backward from the learning
    rate (halved part-way here) and subtracts the gradients as they come: the same numbers."""

    def train(keep_grads):
        bp.manual_seed(3)
        model = bp.nn.mlp([6, 5, 4], "tanh", dtype="float64")
        opt = OPTIMIZERS[optimizer](model.parameters())
        step = bp.TrainStep(model, bp.losses.cross_entropy, opt, capture=capture, keep_grads=keep_grads)
        modes = []
        for i, (x, y) in enumerate(_batches("cross_entropy")):
            if i == 6:
                _halve_lr(model, opt)
            value, _ = step(x, y)
            modes.append(step.mode)
            assert all((p.grad is None) != keep_grads for p in model.parameters()), (step.mode, keep_grads)
        return [p.numpy() for p in model.parameters()], float(bp.to_numpy(value)), modes

    with warnings.catch_warnings():
        warnings.simplefilter("error", bp.CaptureWarning)
        dropped = train(False)
    _assert_same_training(dropped, train(True))
    assert bool(set(dropped[2]) & CAPTURED_MODES) == capture, dropped[2]


class _TwiceSGD(bp.optim.SGD):  # a rule of its own: 2 lr g
    def _delta(self, p, grad, state, numbers):
        return 2 * numbers["lr"] * grad


class _SlowerEachStep(bp.optim.SGD):  # numbers of its own: lr / step
    def numbers(self):
        return {"lr": self.lr / self.steps}


class _WarmUpSGD(bp.optim.SGD):  # sets this step's lr when it counts it
    def start_step(self):
        self.lr = 0.5 * min(1.0, (self.steps + 1) / 4)
        return super().start_step()


class _LoggingSGD(bp.optim.SGD):  # an update of the documented signature, no `scaled`
    def update(self, numbers_of, grads=None):
        super().update(numbers_of, grads)


def _clip_gradient(x):  # a custom op whose backward is not linear in g
    return result(x.data, x.xp, (x,), lambda g, needs: (x.xp.clip(g, -0.01, 0.01),))


class _TwoLayers(bp.nn.Module):
    def __init__(self, dtype="float64"):
        self.first, self.second = bp.nn.Linear(6, 5, dtype=dtype), bp.nn.Linear(5, 4, dtype=dtype)


class _Clipped(_TwoLayers):
    def forward(self, x):
        return self.second(_clip_gradient(bp.tanh(self.first(x))))


class _HalfInside(_TwoLayers):  # float32 parameters and loss, float16 in between
    def forward(self, x):
        hidden = bp.tanh(self.first(x.astype("float32")).astype("float16"))
        return self.second(hidden.astype("float32"))


@pytest.mark.parametrize("capture", [True, False])
def test_a_step_starts_backward_from_lr_only_where_that_is_the_same_step(backend, capture):
    # plain SGD keeping no gradients starts backward from lr; an optimizer that sets, reads or
    # applies lr its own way, a custom op whose backward is not linear in g, and float16 inside
    # the graph must each train as with gradients kept (which never starts from lr)
    def train(rule, keep_grads, model=lambda: bp.nn.mlp([6, 5, 4], "tanh", dtype="float64")):
        bp.manual_seed(3)
        net = model()
        step = bp.TrainStep(net, bp.losses.cross_entropy, rule(net.parameters(), lr=0.1), capture=capture,
                            keep_grads=keep_grads)  # fmt: skip
        xp, dtype = bp.get_backend().xp, net.parameters()[0].dtype
        for x, y in _batches("cross_entropy", 8):
            value, _ = step(xp.astype(x, dtype), y)  # the parameters' dtype: a float64 batch is not captured
        return [p.numpy() for p in net.parameters()], float(bp.to_numpy(value))

    for rule in (_TwiceSGD, _SlowerEachStep, _WarmUpSGD, _LoggingSGD):
        _assert_same_training(train(rule, keep_grads=False), train(rule, keep_grads=True))
    _assert_same_training(train(bp.optim.SGD, False, _Clipped), train(bp.optim.SGD, True, _Clipped))
    if hasattr(bp.get_backend().xp, "float16"):  # not in the standard (array-api-strict)
        half = lambda: _HalfInside("float32")  # noqa: E731
        dropped, kept = train(bp.optim.SGD, False, half), train(bp.optim.SGD, True, half)
        for got, want in zip(dropped[0], kept[0], strict=True):  # both p -= lr * g, in one order
            np.testing.assert_array_equal(got, want)


class _OutsideScale(_TwoLayers):  # a tensor that requires a gradient but is no Parameter
    def __init__(self):
        super().__init__()
        self.scale = bp.tensor([1.5, 0.5, 1.0, 2.0, 0.75], dtype="float64", requires_grad=True)

    def forward(self, x):
        return self.second(bp.tanh(self.first(x)) * self.scale)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("capture", [True, False])
def test_a_step_gives_gradients_to_its_parameters_only(backend, capture, optimizer):
    # as Keras's train_step: a tensor outside the model's parameters and the optimizer's gets no
    # gradient (a replay never gave it one; with it the step cannot be captured, and says why);
    # plain SGD starts backward from lr, so a gradient there would also be lr times too small
    for keep_grads in (True, False):
        bp.manual_seed(3)
        model = _OutsideScale()
        step = bp.TrainStep(model, bp.losses.cross_entropy, OPTIMIZERS[optimizer](model.parameters()),
                            capture=capture, keep_grads=keep_grads)  # fmt: skip
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", bp.CaptureWarning)
            for x, y in _batches("cross_entropy", 8):
                step(x, y)
                assert model.scale.grad is None, (step.mode, keep_grads)
                assert all((p.grad is None) != keep_grads for p in model.parameters()), (step.mode, keep_grads)
        if capture:  # the scale is an array from outside the step: it runs eagerly, and says why
            assert any("an array from outside them" in str(w.message) for w in caught), [str(w.message) for w in caught]


def _head_only(model):
    return model.parameters()[-2:]


def _frozen_first_layer(model):
    model.parameters()[0].requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def _swapped(model):  # two weights of one shape listed the other way round
    params = model.parameters()
    return [params[2], params[1], params[0], *params[3:]]


def _twice(model):  # a parameter listed twice is stepped twice, as a step reading .grad does
    return [model.parameters()[0], *model.parameters()]


@pytest.mark.parametrize("capture", [True, False])
@pytest.mark.parametrize("held", [_head_only, _frozen_first_layer, _swapped, _twice], ids=lambda f: f.__name__[1:])
def test_a_step_updates_what_the_optimizer_holds_in_its_order(backend, capture, held):
    # a step starting backward from lr hands its gradients straight to the update: each must reach
    # its own parameter whatever the optimizer holds (fine-tuning a head, a frozen layer, another
    # order), as a step that keeps gradients (which reads each parameter's .grad) does
    def train(keep_grads):
        bp.manual_seed(3)
        model = bp.nn.Sequential(bp.nn.Linear(6, 6, dtype="float64"), bp.nn.Tanh(), bp.nn.Linear(6, 4, dtype="float64"))
        step = bp.TrainStep(model, bp.losses.cross_entropy, bp.optim.SGD(held(model), lr=0.1), capture=capture,
                            keep_grads=keep_grads)  # fmt: skip
        for x, y in _batches("cross_entropy", 8):
            value, _ = step(x, y)
        return [p.numpy() for p in model.parameters()], float(bp.to_numpy(value))

    _assert_same_training(train(False), train(True))


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix's own
def test_a_target_of_an_array_subclass_is_taken_as_a_plain_array():
    # np.matrix multiplies as matrices: the loss converts it first, so a step trains as with the
    # plain array, and still captures
    def train(as_target):
        bp.manual_seed(3)
        model = bp.nn.mlp([6, 4, 4], "tanh", dtype="float64")  # square outputs for a batch of 4
        step = bp.TrainStep(model, bp.losses.quadratic_loss, bp.optim.SGD(model.parameters(), lr=0.1))
        rng = np.random.default_rng(0)
        with warnings.catch_warnings():
            warnings.simplefilter("error", bp.CaptureWarning)
            for _ in range(5):
                value, _ = step(rng.random((4, 6)), as_target(np.eye(4)[rng.integers(0, 4, 4)]))
        assert step.mode in CAPTURED_MODES, step.mode
        return [p.numpy() for p in model.parameters()], float(value)

    _assert_same_training(train(np.asmatrix), train(np.asarray))


def test_an_eager_step_follows_the_model_to_another_dtype(backend):
    # the 0-d lr that plain SGD starts backward from is made again for the new dtype: a float32 lr
    # left over would scale float64 gradients by a rounded lr (0.3 off by 4e-8)
    xp = bp.get_backend().xp
    sgd = lambda model, keep_grads: bp.TrainStep(  # noqa: E731
        model, bp.losses.quadratic_loss, bp.optim.SGD(model.parameters(), lr=0.3), capture=False, keep_grads=keep_grads
    )
    bp.manual_seed(3)
    model = bp.nn.mlp([6, 5, 4], "tanh", dtype="float32")
    step, batches = sgd(model, False), list(_batches("quadratic", 8))
    for x, y in batches[:4]:
        step(xp.astype(x, xp.float32), xp.astype(y, xp.float32))
    model.to(dtype="float64")
    twin = bp.nn.mlp([6, 5, 4], "tanh", dtype="float64")
    twin.load_state_dict(model.state_dict())
    trained = []
    for net, net_step in ((model, step), (twin, sgd(twin, True))):  # the twin keeps gradients: never from lr
        for x, y in batches[4:]:
            value, _ = net_step(x, y)
        assert value.dtype == xp.float64
        trained.append(([p.numpy() for p in net.parameters()], float(bp.to_numpy(value))))
    _assert_same_training(*trained)


def test_a_compiled_step_scales_by_lr_in_its_update_and_an_op_by_op_one_at_its_start(backend):
    # XLA fuses lr * g into the update (starting from lr measured slower there); a program run one
    # array call at a time saves a call per parameter by starting backward from lr
    bp.manual_seed(3)
    model = bp.nn.mlp([6, 5, 4], "tanh", dtype="float64")
    step = bp.TrainStep(model, bp.losses.cross_entropy, bp.optim.SGD(model.parameters(), lr=0.1), keep_grads=False)
    for x, y in _batches("cross_entropy", 8):
        step(x, y)
    if step.program is None:
        pytest.skip(f"{step.mode} steps have no program")
    lr = f"a{len(model.parameters())}"  # the first input after the parameters
    body = str(step.program).splitlines()[1:]
    uses = [line.split(" = ", 1)[1] for line in body if re.search(rf"\b{lr}\b", line)]
    if BACKENDS[backend].capture == "jit":  # one lr * g per parameter, in its update
        assert len(uses) == len(model.parameters()) and all(use.startswith(f"{lr} * v") for use in uses), uses
    else:  # once, scaling the loss's gradient (lr / batch size)
        assert len(uses) == 1 and uses[0].startswith(f"{lr} / "), uses


def test_capture_order_warm_up_record_verify_replay():
    # SGD without momentum has no state: call 1 warms up, 2 records, 3 verifies (ends eagerly), 4 replays
    *_, modes = _train(True, "sgd", "quadratic")
    assert modes[:3] == ["eager", "traced", "eager"] and modes[4:7] == ["traced"] * 3, modes


def test_a_changed_hyperparameter_captures_again(backend):
    def more_momentum(model, opt):
        opt.momentum = 0.5

    events = {8: [more_momentum]}
    captured = _train(True, "nesterov_decay", "quadratic", events)
    _assert_same_training(captured, _train(False, "nesterov_decay", "quadratic", events))
    assert captured[2][8] == "eager"  # a warm-up for the new setting


def test_a_step_that_cannot_be_captured_runs_eagerly_and_loses_nothing(backend):
    def with_dropout():
        return bp.nn.Sequential(bp.nn.Linear(6, 5, dtype="float64"), bp.nn.Dropout(0.3), bp.nn.Tanh(),
                                bp.nn.Linear(5, 4, dtype="float64"), bp.nn.Sigmoid())  # fmt: skip

    with pytest.warns(bp.CaptureWarning, match="could not be captured: .*not an input of the traced step"):
        captured = _train(True, "adam", "quadratic", model_factory=with_dropout)
    _assert_same_training(captured, _train(False, "adam", "quadratic", model_factory=with_dropout))
    assert set(captured[2]) == {"eager"}


def test_a_replay_that_differs_from_the_eager_step_is_caught(backend):
    """A loss that reads a Python number changing every call: the trace freezes it, the check sees it."""

    def drifting(calls):
        return lambda out, y: bp.losses.quadratic_loss(out, y) * (1.0 + 0.1 * next(calls))

    def train(capture):
        bp.manual_seed(3)
        model = bp.nn.mlp([6, 5, 4], "tanh", "sigmoid", dtype="float64")
        step = bp.TrainStep(model, drifting(itertools.count()), bp.optim.SGD(model.parameters(), lr=0.3), capture)
        for x, y in _batches("quadratic", 8):
            step(x, y)
        return [p.numpy() for p in model.parameters()], step.mode

    with pytest.warns(bp.CaptureWarning, match="replay differs from the eager step"):
        captured, mode = train(True)
    eager, _ = train(False)
    for got, want in zip(captured, eager, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, strict=True)
    assert mode == "eager"


def test_inputs_may_be_tensors_and_results_are_the_step_loss_and_outputs():
    bp.manual_seed(0)
    model = bp.nn.mlp([3, 2], "tanh", dtype="float64")
    step = bp.TrainStep(model, bp.losses.mse_loss, bp.optim.SGD(model.parameters(), lr=0.1), capture=False)
    x, y = bp.tensor(np.ones((4, 3))), np.zeros((4, 2))
    expected_out = model(x).numpy()
    loss, out = step(x, y)
    np.testing.assert_allclose(bp.to_numpy(out), expected_out, strict=True)
    assert float(bp.to_numpy(loss)) == pytest.approx(np.mean(expected_out**2))


def test_fit_with_capture_matches_fit_without(backend, monkeypatch):
    modes = []

    class RecordingStep(bp.TrainStep):  # the step fit builds, telling how each call ran
        def __call__(self, *batch):
            result = super().__call__(*batch)
            modes.append(self.mode)
            return result

    monkeypatch.setattr("backprop.train.TrainStep", RecordingStep)

    def run(capture):
        bp.manual_seed(0)
        x, y = bp.data.spirals(60)
        model = bp.nn.mlp([2, 8, 2], "tanh")
        opt = bp.optim.Adam(model.parameters(), 0.05)
        history = bp.fit(model, bp.losses.cross_entropy, opt, (x, y), epochs=4, batch_size=16, verbose=0,
                         callbacks=[bp.optim.ExponentialDecay(opt, 0.5)], capture=capture)  # fmt: skip
        return history, [p.numpy() for p in model.parameters()]

    with warnings.catch_warnings():
        warnings.simplefilter("error", bp.CaptureWarning)
        captured, weights = run(True)
    assert sum(mode in CAPTURED_MODES for mode in modes) >= 8, modes  # 16 steps, 2 batch shapes
    eager, expected = run(False)
    rtol = 1e-5 if BACKENDS[backend].capture == "jit" else 1e-12  # a compiler fuses: float32 rounding differs
    assert captured["loss"] == pytest.approx(eager["loss"], rel=rtol)
    for got, want in zip(weights, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol, strict=True)


def test_a_replaying_step_holds_and_peaks_no_more_memory_than_an_eager_step():
    """Arrays, that is: the recorded program itself (its calls, a few tens of kB of Python objects
    whatever the sizes, and the constants it holds: widen_scalars' beside a relu) is left out of the count."""
    import dataclasses
    import tracemalloc

    import backprop.optimize
    import backprop.trace

    x, labels = np.random.default_rng(0).random((64, 300)), np.arange(64) % 10
    program_files = [tracemalloc.Filter(True, m.__file__) for m in (backprop.trace, backprop.optimize, dataclasses)]

    def memory(capture):
        tracemalloc.start()
        try:
            model = bp.nn.mlp([300, 200, 10], "relu", dtype="float64")
            step = bp.TrainStep(model, bp.losses.cross_entropy, bp.optim.SGD(model.parameters(), lr=0.1), capture)
            for _ in range(5):
                step(x, labels)
            held = tracemalloc.get_traced_memory()[0]
            snapshot = tracemalloc.take_snapshot().filter_traces(program_files)
            program = sum(s.size for s in snapshot.statistics("filename"))
            if step.program is not None:  # and its constant arrays (made by the backend entry's fast path)
                program += sum(c.nbytes for c in step.program._globals.values() if isinstance(c, np.ndarray) and c.ndim)
            tracemalloc.reset_peak()
            step(x, labels)
            return held - program, tracemalloc.get_traced_memory()[1] - program, step.mode
        finally:
            tracemalloc.stop()

    (eager_held, eager_peak, _), (held, peak, mode) = memory(False), memory(True)
    assert mode == "traced"
    assert held <= 1.05 * eager_held and peak <= 1.05 * eager_peak, (held, eager_held, peak, eager_peak)


def _stand_in_graph_capture(function, inputs):
    """What a device graph does, on any backend with writable arrays: recording runs nothing (the
    inputs keep their values, new outputs hold NaN until a launch), and every launch writes into
    the same arrays."""
    from backprop.backend import namespace_of
    from backprop.trace import trace

    saved = [namespace_of(a).asarray(a, copy=True) for a in inputs]
    program, outputs = trace(function, inputs)  # this runs the function: undo it
    for array, value in zip(inputs, saved, strict=True):
        array[...] = value
    statics = [
        o if o is None or any(o is a for a in inputs) else namespace_of(o).asarray(o, copy=True) for o in outputs
    ]
    for static in statics:
        if static is not None and not any(static is a for a in inputs):
            static[...] = float("nan")

    def launch():
        for static, new in zip(statics, program(*inputs), strict=True):
            if static is not None and static is not new:
                static[...] = new

    return launch, statics, program


@pytest.mark.parametrize("optimizer", ["nesterov_decay", "adam"])
def test_the_graph_path_equals_eager_steps_with_a_stand_in_graph(backend, optimizer, monkeypatch):
    """The CUDA-graph logic (static batch, state copied back into the buffers, gradients bound to
    the graph's arrays, new weights copied in) runs on the CPU through a stand-in capture."""
    entry = BACKENDS[backend]
    if not entry.mutable or entry.capture == "cuda-graph":
        pytest.skip(f"the stand-in writes into arrays ({backend}'s are immutable or have real graphs)")
    monkeypatch.setattr(entry, "capture", "cuda-graph")
    monkeypatch.setattr(entry, "capture_graph", _stand_in_graph_capture)
    events = {6: [_halve_lr], 9: [_new_weights]}
    with warnings.catch_warnings():
        warnings.simplefilter("error", bp.CaptureWarning)
        captured = _train(True, optimizer, "cross_entropy", events)
    _assert_same_training(captured, _train(False, optimizer, "cross_entropy", events))
    assert "cuda-graph" in captured[2][4:], captured[2]


def test_a_graph_that_cannot_be_captured_falls_back_to_a_traced_replay_not_to_eager(monkeypatch):
    """CuPy refuses some calls while a stream captures (cuBLAS before it has a workspace of its
    own): the step is then replayed as a traced program, which needs no graph."""
    entry = BACKENDS["numpy"]

    def refusing(function, inputs):
        raise NotImplementedError("calling cuBLAS API during stream capture is currently unsupported")

    monkeypatch.setattr(entry, "capture", "cuda-graph")
    monkeypatch.setattr(entry, "capture_graph", refusing)
    with pytest.warns(bp.CaptureWarning, match="replays a traced program, not a CUDA graph: calling cuBLAS API"):
        captured = _train(True, "adam", "cross_entropy")
    _assert_same_training(captured, _train(False, "adam", "cross_entropy"))
    assert "traced" in captured[2][4:] and "cuda-graph" not in captured[2], captured[2]


def test_a_replay_that_fails_falls_back_to_eager_and_loses_nothing(monkeypatch):
    """A first replay that raises (a compiler or a graph launch failing) is undone, then run eagerly."""
    from backprop.replay import TracedReplay

    def record_a_broken_replay(function, x, y, entry, optimized=True, record=TracedReplay.record):
        replay, results = record(function, x, y, entry, optimized)

        def broken(*args, **kwargs):  # the replay has counted its step when this raises
            raise RuntimeError("launch failed")

        replay.program = broken
        return replay, results

    monkeypatch.setattr(TracedReplay, "record", staticmethod(record_a_broken_replay))
    with pytest.warns(bp.CaptureWarning, match="its replay failed: launch failed"):
        captured = _train(True, "adam", "quadratic")
    _assert_same_training(captured, _train(False, "adam", "quadratic"))
    assert set(captured[2][4:]) == {"eager"}


class _Halving:
    """A gradient hook (as a data-parallel average over two identical workers would be): halves
    every gradient, and counts the times Python ran it."""

    def __init__(self):
        self.calls = 0

    def __call__(self, grads):
        self.calls += 1
        return [None if g is None else g * 0.5 for g in grads]


@pytest.mark.parametrize("optimizer", ["nesterov_decay", "adam"])
def test_gradient_hooks_run_between_backward_and_update_and_are_captured_with_the_step(backend, optimizer):
    def train(capture, hooks):
        bp.manual_seed(3)
        model = bp.nn.mlp([6, 5, 4], "tanh", "sigmoid", dtype="float64")
        opt = OPTIMIZERS[optimizer](model.parameters())
        step = bp.TrainStep(model, bp.losses.quadratic_loss, opt, capture=capture, gradient_hooks=hooks)
        modes = []
        for x, y in _batches("quadratic"):
            step(x, y)
            modes.append(step.mode)
        return [p.numpy() for p in model.parameters()], [bp.to_numpy(p.grad) for p in model.parameters()], modes

    hook = _Halving()
    with warnings.catch_warnings():
        warnings.simplefilter("error", bp.CaptureWarning)
        captured, captured_grads, modes = train(True, [hook])
    replays = sum(mode in CAPTURED_MODES for mode in modes)
    assert replays >= 4 and hook.calls < len(modes), (modes, hook.calls)  # replays run no Python hook
    eager, eager_grads, _ = train(False, [_Halving()])
    without, _, _ = train(False, [])
    for got, want, other in zip(captured, eager, without, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, strict=True)
        assert not np.allclose(got, other)  # the hook changed the training
    for got, want in zip(captured_grads, eager_grads, strict=True):  # .grad holds what the hooks returned
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, strict=True)


def test_gradient_hooks_also_run_in_the_graph_path(monkeypatch):
    entry = BACKENDS["numpy"]
    monkeypatch.setattr(entry, "capture", "cuda-graph")
    monkeypatch.setattr(entry, "capture_graph", _stand_in_graph_capture)

    def train(capture):
        bp.manual_seed(3)
        model = bp.nn.mlp([6, 5, 4], "tanh", "sigmoid", dtype="float64")
        step = bp.TrainStep(model, bp.losses.cross_entropy, OPTIMIZERS["adam"](model.parameters()),
                            capture=capture, gradient_hooks=[bp.optim.ClipGradNorm(0.05), _Halving()])  # fmt: skip
        modes = [step(x, y) and step.mode for x, y in _batches("cross_entropy")]
        return [p.numpy() for p in model.parameters()], modes

    captured, modes = train(True)
    assert "cuda-graph" in modes[4:], modes
    for got, want in zip(captured, train(False)[0], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, strict=True)


def test_a_gradient_hook_that_loses_gradients_is_an_error_naming_it():
    model = bp.nn.mlp([3, 2], "tanh", dtype="float64")
    step = bp.TrainStep(model, bp.losses.mse_loss, bp.optim.SGD(model.parameters(), lr=0.1), capture=False,
                        gradient_hooks=[lambda grads: grads[:1]])  # fmt: skip
    with pytest.raises(ValueError, match=r"gradient hook <function .*> returned 1 gradients for 2"):
        step(np.ones((4, 3)), np.zeros((4, 2)))


def test_fit_passes_gradient_hooks_to_its_step():
    def run(hooks):
        bp.manual_seed(0)
        x, y = bp.data.spirals(40)
        model = bp.nn.mlp([2, 8, 2], "tanh", dtype="float64")
        bp.fit(model, bp.losses.cross_entropy, bp.optim.SGD(model.parameters(), 0.5), (x, y), epochs=2,
               batch_size=16, verbose=0, gradient_hooks=hooks)  # fmt: skip
        assert all(p.grad is None for p in model.parameters())  # fit's steps keep no gradients
        return [p.numpy() for p in model.parameters()]

    hook = _Halving()
    halved, plain = run([hook]), run([])
    assert hook.calls == 10  # 80 points in batches of 16: 5 steps x 2 epochs
    assert not np.allclose(halved[0], plain[0])


def test_the_layout_names_every_part_and_refuses_wrong_counts():
    from backprop.step import Layout

    layout = Layout(params=2, optimizer_state=3, numbers=1)
    flat = layout.inputs(["p0", "p1", "s0", "s1", "s2"], ["lr"], "x", "y")
    assert layout.split_inputs(flat) == (["p0", "p1", "s0", "s1", "s2"], ["lr"], "x", "y")
    out = layout.outputs(["p0", "p1", "s0", "s1", "s2"], ["g0", "g1"], "loss", "out")
    assert layout.split_outputs(out) == (["p0", "p1", "s0", "s1", "s2"], ["g0", "g1"], "loss", "out")
    with pytest.raises(ValueError, match="expects 5 state arrays, got 4"):
        layout.inputs(["p0", "p1", "s0", "s1"], ["lr"], "x", "y")
    with pytest.raises(ValueError, match="expects 2 gradients, got 1"):
        layout.outputs(["p0", "p1", "s0", "s1", "s2"], ["g0"], "loss", "out")
    with pytest.raises(ValueError, match="expects 9 step outputs, got 8"):
        layout.split_outputs(out[:-1])
    without = Layout(params=2, optimizer_state=3, numbers=1, grads=False)  # a step that keeps no gradients
    out = without.outputs(["p0", "p1", "s0", "s1", "s2"], ["g0", "g1"], "loss", "out")
    assert out == ["p0", "p1", "s0", "s1", "s2", "loss", "out"]
    assert without.split_outputs(out) == (["p0", "p1", "s0", "s1", "s2"], [None, None], "loss", "out")
    with pytest.raises(ValueError, match="expects 7 step outputs, got 9"):
        without.split_outputs(layout.outputs(["p0", "p1", "s0", "s1", "s2"], ["g0", "g1"], "loss", "out"))


def test_a_hooks_named_numbers_join_the_capture_key():
    """A clipping threshold changed mid-training is captured anew, not frozen into the replay."""

    def train(capture):
        bp.manual_seed(0)
        x, y = bp.data.spirals(64)
        model = bp.nn.mlp([2, 16, 2], "tanh", dtype="float64")
        clip = bp.optim.ClipGradNorm(0.01)
        step = bp.TrainStep(model, bp.losses.cross_entropy, bp.optim.SGD(model.parameters(), lr=0.1),
                            capture=capture, gradient_hooks=[clip])  # fmt: skip
        modes = []
        for i in range(12):
            if i == 6:
                clip.max_norm = 1e9
            step(x, y)
            modes.append(step.mode)
        return [p.numpy() for p in model.parameters()], modes

    with warnings.catch_warnings():
        warnings.simplefilter("error", bp.CaptureWarning)
        captured, modes = train(True)
    assert modes[6] == "eager" and "traced" in modes[3:6] and "traced" in modes[9:], modes
    for got, want in zip(captured, train(False)[0], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, strict=True)


@pytest.mark.parametrize("capture", [False, True])
def test_a_step_that_raises_is_not_counted(capture):
    """Adam's bias corrections follow the step count: a failed step must not advance it."""

    def failing_hook(grads):
        if failing_hook.fail:
            raise RuntimeError("all-reduce timed out")
        return grads

    failing_hook.fail = False
    model = bp.nn.mlp([3, 2], "tanh", dtype="float64")
    opt = bp.optim.Adam(model.parameters(), lr=0.1)
    step = bp.TrainStep(model, bp.losses.mse_loss, opt, capture=capture, gradient_hooks=[failing_hook])
    x, y = np.ones((4, 3)), np.zeros((4, 2))
    step(x, y)
    before = [p.numpy().copy() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"expects input of shape \(batch, 3\), got \(4, 5\)"):
        step(np.ones((4, 5)), y)  # fails in the forward pass
    failing_hook.fail = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the hook's own error, not a CaptureWarning for it
        with pytest.raises(RuntimeError, match="all-reduce timed out"):
            step(x, y)  # fails in a hook
    assert opt.steps == 1 and step.capture == capture  # the step's failure is no reason to stop capturing
    for got, want in zip([p.numpy() for p in model.parameters()], before, strict=True):
        np.testing.assert_array_equal(got, want, strict=True)


def _replaying_step(optimizer="adam"):
    bp.manual_seed(2)
    model = bp.nn.mlp([6, 5, 4], "tanh", dtype="float64")
    step = bp.TrainStep(model, bp.losses.cross_entropy, OPTIMIZERS[optimizer](model.parameters()))
    batches = list(_batches("cross_entropy", 8))
    for x, y in batches[:5]:
        step(x, y)
    assert step.mode in CAPTURED_MODES, step.mode
    return model, step, batches


def test_a_replay_consumes_only_the_state_the_last_replay_returned(backend):
    """Where the entry donates (JAX: `jax.jit` with donate_argnums), a replay consumes the arrays
    the previous replay returned, and copies any other first: yours are never deleted."""
    if not BACKENDS[backend].donates:
        pytest.skip(f"{backend}'s compiled steps consume no inputs")
    model, step, batches = _replaying_step()
    returned = model.parameters()[0].data
    mine = bp.get_backend().asarray(bp.to_numpy(model.parameters()[1].data) * 0.5)
    model.parameters()[1].data = mine
    step(*batches[5])
    assert returned.is_deleted() and not mine.is_deleted()
    kept = bp.to_numpy(mine)
    step(*batches[6])  # the state the last replay returned: consumed, and the step still right
    np.testing.assert_array_equal(bp.to_numpy(mine), kept, strict=True)
    assert all(not p.data.is_deleted() for p in model.parameters())


def test_jax_debug_nans_turns_donation_off(backend):
    """Under jax_debug_nans (or _infs) JAX runs a call that made a NaN again, on its inputs: they
    must not have been consumed. The flags are read at each call (they may be set at any time)."""
    if not BACKENDS[backend].donates:
        pytest.skip(f"{backend}'s compiled steps consume no inputs")
    import jax

    program = BACKENDS[backend].compile(lambda a: [a * 2.0], donated=(0,))

    def call(**flags):
        given = bp.get_backend().asarray(np.arange(3.0))
        with jax.debug_nans(flags.get("nans", False)), jax.debug_infs(flags.get("infs", False)):
            np.testing.assert_array_equal(bp.to_numpy(program(given)[0]), [0.0, 2.0, 4.0])
        return given.is_deleted()

    assert call() and not call(nans=True) and not call(infs=True) and call()


@pytest.mark.parametrize("per_call", [1, 4])
def test_a_nan_caught_by_jax_debug_nans_loses_no_state(backend, per_call):
    """jax_debug_nans turned on after the step was compiled: the NaN is the error, and the state
    survives it (a donating call would have consumed it before the rerun)."""
    if not BACKENDS[backend].donates:
        pytest.skip(f"{backend}'s compiled steps consume no inputs")
    import jax

    model, step, batches = _replaying_step()
    run = (lambda group: step.run_many(group)) if per_call > 1 else (lambda group: step(*group[0]))
    x, y = batches[0]
    for _ in range(2):  # K steps a call: checked, then replayed
        run([(x, y)] * per_call)
    assert step.mode == ("jit-scan" if per_call > 1 else "jit"), step.mode
    before = [p.numpy().copy() for p in model.parameters()]
    with jax.debug_nans(True), pytest.raises(FloatingPointError):
        run([(x.at[0].set(np.inf), y)] * per_call)
    for p, kept in zip(model.parameters(), before, strict=True):
        assert not p.data.is_deleted()
        np.testing.assert_array_equal(p.numpy(), kept, strict=True)
    run([(x, y)] * per_call)  # and training goes on
    assert step.mode == ("jit-scan" if per_call > 1 else "jit"), step.mode


def _interrupted_once(function, model, calls: list):
    """A `take_outputs` for `function` that, at its first call, takes the first parameter and is
    then interrupted; each call is appended to `calls`."""
    take = function.take_outputs

    def interrupted(layout, outputs):
        calls.append(1)
        if len(calls) == 1:
            model.parameters()[0].data = layout.split_outputs(outputs)[0][0]
            raise KeyboardInterrupt
        return take(layout, outputs)

    return interrupted


class _FlakyHost:
    """A gradient hook that averages through host code (as fit's MPI all-reduce does), which fails
    when told to (a lost connection)."""

    def __init__(self):
        self.fail = False

    def _host(self, array):
        if self.fail:
            raise ConnectionError("the all-reduce lost a rank")
        return array

    def __call__(self, grads):
        from backprop.backend import namespace_of
        from backprop.backends import backend_of
        from backprop.trace import external

        average = lambda g: backend_of(namespace_of(g)).host_callback(self._host, g)  # noqa: E731
        return [None if g is None else external(average, g) for g in grads]


def test_a_replay_whose_host_call_fails_loses_no_state(backend):
    """A step that calls out of the array library can fail after it started: its state must
    survive (on JAX nothing is donated to such a step, or XLA would have consumed it)."""
    bp.manual_seed(2)
    model = bp.nn.mlp([6, 5, 4], "tanh", dtype="float64")
    hook = _FlakyHost()
    step = bp.TrainStep(model, bp.losses.cross_entropy, OPTIMIZERS["adam"](model.parameters()), gradient_hooks=[hook])
    batches = list(_batches("cross_entropy", 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error", bp.CaptureWarning)
        for x, y in batches[:5]:
            step(x, y)
    assert step.mode in CAPTURED_MODES, step.mode
    before = [p.numpy().copy() for p in model.parameters()], [bp.to_numpy(a) for a in step.optimizer.state_arrays()]
    hook.fail = True
    with pytest.raises(Exception, match="lost a rank"):
        step(*batches[5])
    bp.backend.backend_of(model.parameters()[0].xp).synchronize([p.data for p in model.parameters()])
    assert step.optimizer.steps == 5
    for p, kept in zip(model.parameters(), before[0], strict=True):
        np.testing.assert_array_equal(p.numpy(), kept, strict=True)
    for array, kept in zip(step.optimizer.state_arrays(), before[1], strict=True):
        np.testing.assert_array_equal(bp.to_numpy(array), kept, strict=True)
    hook.fail = False
    step(*batches[6])  # and training goes on
    assert step.optimizer.steps == 6 and step.mode in CAPTURED_MODES


def test_an_interrupt_while_a_replay_takes_its_results_leaves_the_step_done_and_counted(backend, monkeypatch):
    """An interrupt that arrives once the compiled step has run (and, on JAX, consumed the old
    state) must not lose its results: they become the state, and the step counts."""
    model, step, batches = _replaying_step()
    reference, reference_step, _ = _replaying_step()
    reference_step(*batches[5])
    calls = []
    monkeypatch.setattr(step.function, "take_outputs", _interrupted_once(step.function, model, calls))
    with pytest.raises(KeyboardInterrupt):
        step(*batches[5])
    monkeypatch.undo()
    assert len(calls) == 2 and step.optimizer.steps == reference_step.optimizer.steps
    for got, want in zip(model.parameters(), reference.parameters(), strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy(), strict=True)
    step(*batches[6])  # and training goes on
    reference_step(*batches[6])
    for got, want in zip(model.parameters(), reference.parameters(), strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy(), strict=True)


def test_a_new_model_loss_or_optimizer_on_a_train_step_is_planned_anew():
    bp.manual_seed(0)
    model = bp.nn.mlp([3, 2], "tanh", dtype="float64")
    step = bp.TrainStep(model, bp.losses.mse_loss, bp.optim.SGD(model.parameters(), lr=0.1))
    x, y = np.ones((4, 3)), np.zeros((4, 2))
    for _ in range(4):
        step(x, y)
    assert step.mode == "traced" and step.params == model.parameters()
    other = bp.nn.mlp([3, 2], "tanh", dtype="float64")
    step.model, step.optimizer = other, bp.optim.SGD(other.parameters(), lr=0.1)
    before = other.parameters()[0].numpy().copy()
    step(x, y)
    assert step.mode == "eager" and step.params == other.parameters()
    assert not np.array_equal(other.parameters()[0].numpy(), before)  # the new model trained


def test_replays_of_two_batch_shapes_take_over_from_each_other_without_copying_the_state(backend, monkeypatch):
    def model_and_step(capture):
        bp.manual_seed(0)
        model = bp.nn.mlp([5, 7, 3], "tanh", dtype="float64")
        adam = bp.optim.Adam(model.parameters(), lr=0.05)  # state that replays own (JAX: all of it)
        return model, bp.TrainStep(model, bp.losses.cross_entropy, adam, capture=capture)

    rng = np.random.default_rng(1)
    batches = [(rng.standard_normal((n, 5)), rng.integers(0, 3, n)) for n in (8, 6)] * 8
    model, step = model_and_step(True)
    copies = []
    copy = backprop.replay.copy_array
    monkeypatch.setattr("backprop.replay.copy_array", lambda a: copies.append(a) or copy(a))
    modes = []
    for i, (x, y) in enumerate(batches):
        if i == 8:  # each shape warmed up, recorded and checked
            copies.clear()
        step(bp.tensor(x), bp.tensor(y))
        modes.append(step.mode)
    assert all(mode in CAPTURED_MODES for mode in modes[8:]), modes
    assert copies == [], f"{len(copies)} state arrays copied in 8 replays that alternate two batch shapes"
    eager_model, eager = model_and_step(False)
    for x, y in batches:
        eager(bp.tensor(x), bp.tensor(y))
    rtol = 1e-12 if BACKENDS[backend].capture != "jit" else 1e-9
    for got, want in zip(model.parameters(), eager_model.parameters(), strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=rtol, atol=rtol)


class _BranchOnBatchSize(bp.nn.Module):
    """A layer only batches of 3 go through (as a last, smaller batch might take another path)."""

    def __init__(self):
        self.first = bp.nn.Linear(6, 4, dtype="float64")
        self.extra = bp.nn.Linear(4, 4, dtype="float64")

    def forward(self, x):
        h = self.first(x)
        return self.extra(h) if x.shape[0] == 3 else h


def test_a_capture_recorded_before_the_optimizer_had_all_its_state_records_again(backend):
    """Batches of 8 are captured while `extra` has no Adam state; a batch of 3 then gives it
    some: the replays of batches of 8 were laid out for fewer state arrays (they raised at every
    later call), and are recorded again."""

    def run(capture):
        bp.manual_seed(0)
        model = _BranchOnBatchSize()
        step = bp.TrainStep(model, bp.losses.cross_entropy, bp.optim.Adam(model.parameters(), lr=0.01),
                            capture=capture)  # fmt: skip
        be, rng, modes = bp.get_backend(), np.random.default_rng(0), []
        for n in [8] * 5 + [3] + [8] * 6 + [3] * 4:
            value, _ = step(be.asarray(rng.standard_normal((n, 6))), be.asarray(rng.integers(0, 4, n)))
            modes.append(step.mode)
        return [p.numpy() for p in model.parameters()], float(bp.to_numpy(value)), modes

    modes = _captured_as_eager(run, backend)
    assert set(modes[6:12]) & CAPTURED_MODES and set(modes[12:]) & CAPTURED_MODES, modes


class _TiedAutoencoder(bp.nn.Module):
    """The decoder's weight is the encoder's, transposed: a view of the same memory."""

    def __init__(self):
        self.enc = bp.nn.Linear(6, 3, dtype="float64")
        self.dec = bp.nn.Parameter(self.enc.weight.data.T)

    def forward(self, x):
        return self.enc(x).tanh() @ self.dec


def test_checking_a_replay_undoes_it_in_the_arrays_the_model_and_the_caller_hold(backend):
    """The check of a new capture replays a step and undoes it: the values go back into the
    parameters' own arrays, so weights tied through shared memory stay tied, and an array the
    caller holds stays the parameter (undone by rebinding to copies, the tie came apart, the check
    failed and training went on differing from eager steps)."""
    if not BACKENDS[backend].mutable:
        pytest.skip("this library's arrays share no memory that a step writes into")

    def run(capture):
        bp.manual_seed(0)
        model = _TiedAutoencoder()
        step = bp.TrainStep(model, bp.losses.mse_loss, bp.optim.SGD(model.parameters(), lr=0.05), capture=capture)
        held, be, rng = model.enc.weight.data, bp.get_backend(), np.random.default_rng(0)
        for _ in range(6):
            x = be.asarray(rng.standard_normal((8, 6)))
            step(x, x)
        assert held is model.enc.weight.data and np.array_equal(model.enc.weight.numpy().T, model.dec.numpy())
        return model.enc.weight.numpy(), step.mode

    with warnings.catch_warnings():
        warnings.simplefilter("error", bp.CaptureWarning)
        (weights, mode), (expected, _) = run(True), run(False)
    np.testing.assert_array_equal(weights, expected)
    assert mode in CAPTURED_MODES


def test_a_batch_that_is_a_parameters_own_array_is_not_donated_with_it(backend):
    """A square layer fed its own weight: a replay that donates the state (JAX) would consume the
    batch with it ("a buffer that was previously donated"); the batch is copied first."""

    def run(capture):
        bp.manual_seed(0)
        model = bp.nn.Sequential(bp.nn.Linear(5, 5, dtype="float64"), bp.nn.Tanh())
        step = bp.TrainStep(model, bp.losses.mse_loss, bp.optim.Adam(model.parameters(), lr=0.01), capture=capture)
        y = bp.get_backend().asarray(np.linspace(-0.5, 0.5, 25).reshape(5, 5))
        modes = []
        for _ in range(8):
            value, _ = step(model[0].weight.data, y)
            modes.append(step.mode)
        return [p.numpy() for p in model.parameters()], float(bp.to_numpy(value)), modes

    modes = _captured_as_eager(run, backend)
    assert set(modes[4:]) & CAPTURED_MODES, modes


def test_a_batch_of_python_lists_runs_eagerly_as_without_capture():
    """The capture key reads shapes; lists have none (it raised AttributeError): such a call runs
    eagerly, which converts them, with or without capture and one or several steps to a call."""

    def run(capture, many):
        bp.manual_seed(0)
        model = bp.nn.mlp([3, 4, 3], "tanh", dtype="float64")
        step = bp.TrainStep(model, bp.losses.cross_entropy, bp.optim.SGD(model.parameters(), lr=0.1), capture=capture)
        x, y = [[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], [2, 0]
        for _ in range(5):
            step.run_many([(x, y), (x, y)]) if many else step(x, y)
        return [p.numpy() for p in model.parameters()]

    for many in (False, True):
        for got, want in zip(run(True, many), run(False, many), strict=True):
            np.testing.assert_array_equal(got, want)


def test_a_replay_a_last_bit_off_the_eager_step_is_caught_where_replays_make_the_same_calls(backend):
    """A loss scaled by a number drifting by 1e-15 a call: the trace freezes it. Where a replay
    runs the library's own calls, the check is bit for bit and sees it; under a compiler (JAX)
    rounding is allowed, and it is not seen."""
    calls = itertools.count()
    drifting = lambda out, y: bp.losses.quadratic_loss(out, y) * (1.0 + 1e-15 * next(calls))  # noqa: E731
    bp.manual_seed(3)
    model = bp.nn.mlp([6, 5, 4], "tanh", "sigmoid", dtype="float64")
    step = bp.TrainStep(model, drifting, bp.optim.SGD(model.parameters(), lr=0.3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", bp.CaptureWarning)
        for x, y in _batches("quadratic", 8):
            step(x, y)
    seen = [str(w.message) for w in caught if "replay differs from the eager step" in str(w.message)]
    assert len(seen) == (BACKENDS[backend].capture == "traced"), seen


@pytest.mark.parametrize("inputs", ["float64", "int64"])
def test_a_batch_wider_than_the_parameters_runs_eagerly_and_says_why(backend, inputs):
    """float64 (or, in NumPy, int64) inputs for float32 parameters: the eager step applies lr as a
    Python float to float64 gradients, a replay as a 0-d float32 array (lr rounded): other last
    bits, already in the recording step. Not captured, and said so."""
    if backend in ("torch", "array_api_strict"):
        pytest.skip(f"{backend} mixes no float64 batch with float32 parameters, even eagerly")
    xp = bp.get_backend().xp
    widens = xp.result_type(getattr(xp, inputs), xp.float32) != xp.float32  # JAX: int64 and float32 give float32

    def run(capture):
        bp.manual_seed(0)
        model = bp.nn.mlp([6, 5, 4], "tanh", dtype="float32")
        step = bp.TrainStep(model, bp.losses.cross_entropy, bp.optim.SGD(model.parameters(), lr=0.1), capture=capture)
        for x, y in _batches("cross_entropy", 6):
            step(xp.astype(x * 4, getattr(xp, inputs)), y)
        assert all(p.numpy().dtype == np.float32 for p in model.parameters())  # as `p -= delta` keeps it
        return [p.numpy() for p in model.parameters()], step.mode

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", bp.CaptureWarning)
        (captured, mode), (eager, _) = run(True), run(False)
    reasons = [str(w.message) for w in caught]
    if widens:
        assert len(reasons) == 1 and "a step number (the learning rate, ...) of dtype float32 meets arrays of " \
            f"{inputs if inputs == 'float64' else 'float64'}" in reasons[0], reasons  # fmt: skip
        assert mode == "eager"
    else:
        assert not reasons and mode in CAPTURED_MODES
    exact = widens or BACKENDS[backend].capture != "jit"  # eager both times, or the same calls
    for got, want in zip(captured, eager, strict=True):
        np.testing.assert_allclose(got, want, rtol=0 if exact else 1e-6, atol=0 if exact else 1e-7)


class _Embedding(bp.nn.Module):
    """Rows of a table picked by integer inputs: the indices meet no step number."""

    def __init__(self):
        self.table = bp.nn.Parameter(bp.tensor(np.linspace(-1, 1, 40).reshape(10, 4), dtype="float32").data)
        self.out = bp.nn.Linear(4, 3, dtype="float32")

    def forward(self, x):
        return self.out(bp.take(self.table, x, axis=0))


def test_integer_inputs_that_only_pick_rows_are_captured(backend):
    be = bp.get_backend()
    bp.manual_seed(0)
    model = _Embedding()
    step = bp.TrainStep(model, bp.losses.cross_entropy, bp.optim.SGD(model.parameters(), lr=0.1))
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", bp.CaptureWarning)
        for _ in range(6):
            step(be.asarray(rng.integers(0, 10, 7)), be.asarray(rng.integers(0, 3, 7)))
    assert step.mode in CAPTURED_MODES


def test_float16_parameters_on_pytorch_run_eagerly_and_say_why():
    """PyTorch applies a Python float to a float16 tensor in float32, or not, by the kernel: no 0-d
    array a replay could take stands for it (with one, the recorded step already differed)."""
    if bp.backends.get_entry("torch").unavailable():
        pytest.skip("torch is not available here")

    def run(capture):
        with bp.use_backend("torch"):
            bp.manual_seed(0)
            model = bp.nn.mlp([6, 8, 4], "tanh", dtype="float16")
            step = bp.TrainStep(model, bp.losses.mse_loss, bp.optim.SGD(model.parameters(), lr=0.1), capture=capture)
            be, rng = bp.get_backend(), np.random.default_rng(0)
            for _ in range(6):
                step(be.asarray(rng.standard_normal((16, 6)).astype("float16")),
                     be.asarray(np.eye(4, dtype="float16")[rng.integers(0, 4, 16)]))  # fmt: skip
            return [p.numpy() for p in model.parameters()]

    with pytest.warns(bp.CaptureWarning, match="its parameters are float16, where torch applies the learning rate"):
        captured = run(True)
    for got, want in zip(captured, run(False), strict=True):
        np.testing.assert_array_equal(got, want)


class _WeightedCrossEntropy(bp.nn.Module):
    def __init__(self):
        self.weight = 1.0

    def forward(self, out, y):
        return bp.losses.cross_entropy(out, y) * self.weight


def test_a_loss_that_is_a_module_is_guarded_as_the_model_is(backend):
    """Its settings join the fingerprint: a replay recorded with weight 1.0 kept it after 5.0."""

    def run(capture):
        bp.manual_seed(0)
        model, loss = bp.nn.mlp([6, 5, 4], "tanh", dtype="float64"), _WeightedCrossEntropy()
        step = bp.TrainStep(model, loss, bp.optim.SGD(model.parameters(), lr=0.1), capture=capture)
        modes = []
        for i, (x, y) in enumerate(_batches("cross_entropy", 10)):
            if i == 5:
                loss.weight = 5.0
            value, _ = step(x, y)
            modes.append(step.mode)
        return [p.numpy() for p in model.parameters()], float(bp.to_numpy(value)), modes

    modes = _captured_as_eager(run, backend)
    assert set(modes[8:]) & CAPTURED_MODES, modes


def test_restoring_a_snapshot_writes_the_values_back_into_the_same_arrays(backend):
    """What the check of a replay undoes: parameters and optimizer state get their values back in
    the arrays they had (where the library writes in place), so nothing that shares them drifts."""
    bp.manual_seed(0)
    model = bp.nn.mlp([6, 5, 4], "tanh", dtype="float64")
    step = bp.TrainStep(model, bp.losses.cross_entropy, bp.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    step(*next(iter(_batches("cross_entropy", 1))))  # the optimizer has its state
    function = step.function
    arrays = [*function.state()]
    values = [bp.to_numpy(a).copy() for a in arrays]
    snapshot = function.snapshot()
    for p in model.parameters():
        p.data = BACKENDS[backend].set_at(p.data, ..., p.data * 3.0)  # as a replay updates: in place where it can
    for state in step.optimizer.state:
        for name in state:
            state[name] = state[name] * 2.0  # as an eager step replaces them
    function.restore(snapshot)
    same = BACKENDS[backend].mutable
    for array, old, value in zip(function.state(), arrays, values, strict=True):
        np.testing.assert_array_equal(bp.to_numpy(array), value)
        assert (array is old) == same


def test_loading_weights_writes_them_into_the_parameters_own_arrays(backend):
    """load_state_dict (also EarlyStopping's restore and fit's resume) as PyTorch's copy_: tied
    weights stay tied and an array the caller holds stays the parameter."""
    if not BACKENDS[backend].mutable:
        pytest.skip("this library's arrays share no memory that a load writes into")
    bp.manual_seed(0)
    model = _TiedAutoencoder()
    held = model.enc.weight.data
    state = {name: np.asarray(a) * 0.5 - 0.25 for name, a in model.state_dict().items()}
    model.load_state_dict(state)
    assert held is model.enc.weight.data
    np.testing.assert_array_equal(model.enc.weight.numpy(), state["enc.weight"])
    step = bp.TrainStep(model, bp.losses.mse_loss, bp.optim.SGD(model.parameters(), lr=0.05))
    x = bp.get_backend().asarray(np.linspace(-1, 1, 48).reshape(8, 6))
    step(x, x)
    np.testing.assert_array_equal(model.enc.weight.numpy().T, model.dec.numpy())  # one array, updated twice


class _Residual(bp.nn.Module):
    def __init__(self):
        self.lin = bp.nn.Linear(6, 6, dtype="float32")

    def forward(self, x):
        return x * 1.5 + self.lin(x)  # column-major x + row-major product: a row-major array in NumPy


@pytest.mark.parametrize("orders", ["CCCCFFFFFFFF", "FFFFCCCCCCCC"])
def test_batches_of_another_memory_layout_get_a_capture_of_their_own(orders):
    """An optimized NumPy program writes results into temporaries whose layout follows the
    batch's: recorded on row-major batches, it summed column-major ones in another order."""

    def run(capture):
        bp.manual_seed(0)
        model = _Residual()
        step = bp.TrainStep(model, bp.losses.mse_loss, bp.optim.SGD(model.parameters(), lr=0.01), capture=capture)
        rng, losses = np.random.default_rng(0), []
        for order in orders:
            x = np.asarray((rng.standard_normal((512, 6)) * 3).astype("float32"), order=order)
            y = np.asarray((rng.standard_normal((512, 6)) * 2).astype("float32"), order=order)
            loss, _ = step(x, y)
            losses.append(float(loss))
        return [p.numpy() for p in model.parameters()], losses, step.mode

    with warnings.catch_warnings():
        warnings.simplefilter("error", bp.CaptureWarning)
        weights, losses, mode = run(True)
    expected, expected_losses, _ = run(False)
    assert losses == expected_losses and mode == "traced"
    for got, want in zip(weights, expected, strict=True):
        np.testing.assert_array_equal(got, want)
