"""A captured step never trains a different network than the eager step would: every change that
can alter the step (freezing, modes, module settings, replaced layers, dtypes, shapes, numbers a
loss names) is noticed, on every backend, and bad labels are refused under capture too."""

import warnings

import numpy as np
import pytest

import backprop as bp
from backprop import changes
from backprop.errors import ConfigError
from backprop.step import StepFunction

CAPTURED_MODES = {"traced", "jit", "cuda-graph"}


class _Scaled(bp.nn.Module):
    """Halves its input in eval mode: a sub-module whose mode changes the step."""

    def forward(self, x):
        return x if self.training else x * 0.5


def _model():
    return bp.nn.Sequential(
        bp.nn.Linear(6, 5, dtype="float64"), bp.nn.LeakyReLU(0.1), _Scaled(),
        bp.nn.Linear(5, 4, dtype="float64"), bp.nn.Sigmoid(),
    )  # fmt: skip


def _batches(count: int, rows: int = 7):
    rng, be = np.random.default_rng(0), bp.get_backend()
    for _ in range(count):
        yield be.asarray(rng.random((rows, 6))), be.asarray(np.eye(4)[rng.integers(0, 4, rows)])


def _train(capture: bool, events: dict, steps: int = 14, optimizer=None, loss=bp.losses.quadratic_loss):
    """Parameters and modes after `steps` steps; `events[i](model, opt, step)` runs before step i."""
    bp.manual_seed(5)
    model = _model()
    opt = (optimizer or (lambda ps: bp.optim.SGD(ps, lr=0.5, momentum=0.9)))(model.parameters())
    step = bp.TrainStep(model, loss, opt, capture=capture)
    modes = []
    for i, (x, y) in enumerate(_batches(steps)):
        if i in events:
            events[i](model, opt, step)
        dtype, xp = model[0].weight.data.dtype, bp.get_backend().xp
        step(xp.astype(x, dtype), xp.astype(y, dtype))  # the batch follows the model's dtype
        modes.append(step.mode)
    return [p.numpy() for p in model.parameters()], modes


def _same_as_eager(events: dict, **options) -> list:
    """Train captured and eager with the same events: the same parameters; the captured modes."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", bp.CaptureWarning)
        captured, modes = _train(True, events, **options)
    eager, _ = _train(False, events, **options)
    for got, want in zip(captured, eager, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, strict=True)
    assert set(modes[-3:]) <= CAPTURED_MODES, f"the step was not replayed after the change: {modes}"
    return modes


def _freeze(model, opt, step):
    model[0].weight.requires_grad = False


def test_a_frozen_layer_stops_moving_under_capture(backend):
    frozen = {}

    def freeze_and_remember(model, opt, step):
        _freeze(model, opt, step)
        frozen["before"] = model[0].weight.numpy().copy()
        frozen["parameter"] = model[0].weight

    modes = _same_as_eager({7: freeze_and_remember})
    assert set(modes[4:7]) <= CAPTURED_MODES  # it was replaying before the freeze
    np.testing.assert_array_equal(frozen["parameter"].numpy(), frozen["before"], strict=True)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda model, opt, step: model[2].eval(), id="a sub-module's mode"),
        pytest.param(lambda model, opt, step: setattr(model[1], "negative_slope", 0.3), id="a module setting"),
        pytest.param(lambda model, opt, step: model.__setitem__(1, bp.nn.Tanh()), id="a replaced layer"),
        pytest.param(lambda model, opt, step: model.layers.insert(2, bp.nn.Tanh()), id="an inserted layer"),
        pytest.param(lambda model, opt, step: setattr(opt, "momentum", 0.5), id="an optimizer setting"),
    ],
)
def test_every_change_to_the_step_is_noticed_by_a_captured_step(backend, change):
    modes = _same_as_eager({7: change})
    assert set(modes[4:7]) <= CAPTURED_MODES and modes[7] == "eager", modes  # replaying, then a new warm-up


def test_loaded_weights_of_the_same_shapes_are_replayed_without_a_new_capture(backend):
    modes = _same_as_eager({7: lambda model, opt, step: model.load_state_dict(
        {k: v * 0.5 for k, v in model.state_dict().items()})})  # fmt: skip
    assert set(modes[4:]) <= CAPTURED_MODES, modes


def test_a_change_of_dtype_captures_again(backend):
    """Parameters moved to float32 midway: the old float64 capture must not run on them."""
    plain_sgd = lambda params: bp.optim.SGD(params, lr=0.5)  # noqa: E731 (to() leaves optimizer state as it is)
    modes = _same_as_eager({7: lambda model, opt, step: model.to(dtype="float32")}, optimizer=plain_sgd)
    assert modes[7] == "eager", modes


def test_a_new_input_dtype_is_a_capture_of_its_own():
    bp.manual_seed(5)
    model = _model()
    step = bp.TrainStep(model, bp.losses.quadratic_loss, bp.optim.SGD(model.parameters(), lr=0.5))
    for x, y in _batches(8):
        step(x, y)
    assert step.mode in CAPTURED_MODES
    step(x.astype(np.float32), y)
    assert step.mode == "eager"  # a warm-up for the new key, not the float64 replay


def test_a_frozen_layer_through_fit_with_a_callback(backend):
    class FreezeFirst:
        def on_epoch_end(self, model, record):
            model[0].weight.requires_grad = False
            self.frozen = model[0].weight.numpy().copy()
            return False

    rng = np.random.default_rng(1)
    x, labels = rng.random((60, 6)), rng.integers(0, 4, 60)
    bp.manual_seed(2)
    model = _model()
    callback = FreezeFirst()
    with warnings.catch_warnings():
        warnings.simplefilter("error", bp.CaptureWarning)
        bp.fit(model, bp.losses.cross_entropy, bp.optim.Adam(model.parameters(), 0.01), (x, labels),
               epochs=3, batch_size=10, callbacks=[callback], capture=True, verbose=0, metrics=())  # fmt: skip
    np.testing.assert_array_equal(model[0].weight.numpy(), callback.frozen, strict=True)


class _WeightedLoss:
    """A loss that reads a Python number and names it, as the step protocol asks."""

    hyperparameters = ("weight",)

    def __init__(self, weight: float):
        self.weight = weight

    def __call__(self, out, y):
        return bp.losses.quadratic_loss(out, y) * self.weight


def test_a_number_a_loss_names_is_part_of_the_guard(backend):
    loss = _WeightedLoss(1.0)

    def heavier(model, opt, step):
        loss.weight = 3.0

    def again(model, opt, step):
        loss.weight = 1.0

    modes = _same_as_eager({6: heavier, 11: again}, loss=loss, steps=16)
    assert modes[6] == "eager" and modes[11] in CAPTURED_MODES, modes  # 1.0 was captured before


def test_labels_out_of_range_in_a_late_batch_are_refused_before_training_under_capture(backend):
    rng = np.random.default_rng(0)
    x, labels = rng.random((50, 6)), rng.integers(0, 4, 50)
    labels[47] = 12
    bp.manual_seed(1)
    model = _model()
    before = [p.numpy().copy() for p in model.parameters()]
    for capture in (True, False):
        with pytest.raises(ConfigError, match=r"training labels must be in 0..3 for 4 outputs: label 12 at index 47"):
            bp.fit(model, bp.losses.cross_entropy, bp.optim.SGD(model.parameters(), 0.1), (x, labels),
                   epochs=2, batch_size=10, capture=capture, verbose=0)  # fmt: skip
    labels[47] = -1
    with pytest.raises(ConfigError, match="validation labels must be in 0..3 for 4 outputs: label -1"):
        bp.fit(model, bp.losses.cross_entropy, bp.optim.SGD(model.parameters(), 0.1), (x, labels % 4),
               epochs=2, batch_size=10, validation=(x, labels), capture=True, verbose=0)  # fmt: skip
    for p, b in zip(model.parameters(), before, strict=True):
        np.testing.assert_array_equal(p.numpy(), b, strict=True)


def test_module_changes_are_counted_and_caches_are_not():
    model = _model()
    before = changes.count
    model(bp.tensor(np.zeros((2, 6))))  # a forward fills Sequential's plan cache: not a change
    assert changes.count == before
    model.train()
    model.layers.append(bp.nn.Tanh())
    assert changes.count >= before + 2


def test_the_guard_walks_the_model_only_after_a_change(monkeypatch):
    """Replays compare a counter, flags and array identities; the walk over the model (the
    fingerprint) runs only when one of them moved."""
    walks = []
    fingerprint = StepFunction.fingerprint
    monkeypatch.setattr(StepFunction, "fingerprint", lambda self, state: walks.append(1) or fingerprint(self, state))
    bp.manual_seed(5)
    model = _model()
    step = bp.TrainStep(model, bp.losses.quadratic_loss, bp.optim.SGD(model.parameters(), lr=0.5))
    counts = []
    for i, (x, y) in enumerate(_batches(14)):
        if i == 9:
            model[1].negative_slope = 0.2
        step(x, y)
        counts.append(len(walks))
    assert counts[5:9] == [counts[4]] * 4, counts  # replays: no walk
    assert counts[9] > counts[8], counts  # the change: walked, planned anew


def test_a_change_during_warm_up_is_planned_anew(backend):
    """Before anything is captured, a replaced layer must still reach the step's parameter list."""
    replace = {1: lambda model, opt, step: model.__setitem__(3, bp.nn.Linear(5, 4, dtype="float64"))}
    modes = _same_as_eager(replace)
    assert set(modes[-4:]) <= CAPTURED_MODES, modes


def test_validation_between_epochs_does_not_drop_the_captures():
    """evaluate() switches modes and runs the model: nothing the step depends on has changed."""
    recordings = []
    record = bp.step.TrainStep._record
    x, y = bp.data.spirals(60, seed=1)
    bp.manual_seed(0)
    model = bp.nn.mlp([2, 8, 3], "tanh")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bp.step.TrainStep, "_record", lambda self, *a: recordings.append(a[0]) or record(self, *a))
        bp.fit(model, bp.losses.cross_entropy, bp.optim.SGD(model.parameters(), 0.1), (x, y), 4, 16,
               validation=(x, y), capture=True, verbose=0)  # fmt: skip
    assert len(recordings) == len(set(recordings)), recordings  # each batch shape recorded once


def test_a_layer_list_assigned_as_a_plain_list_still_notes_its_edits():
    model = bp.nn.Sequential(bp.nn.Linear(2, 3))
    model.layers = [bp.nn.Linear(2, 3)]
    x = bp.tensor(np.ones((1, 2)))
    assert model(x).shape == (1, 3)
    model.layers.append(bp.nn.Linear(3, 5))
    assert model(x).shape == (1, 5)


class _Counting(bp.nn.Module):
    """Counts its calls in an attribute: the step it is in changes at every call."""

    def __init__(self):
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x


def test_a_module_that_changes_at_every_call_ends_capturing_with_a_reason():
    bp.manual_seed(0)
    model = bp.nn.Sequential(bp.nn.Linear(6, 5, dtype="float64"), _Counting(), bp.nn.Linear(5, 4, dtype="float64"))
    step = bp.TrainStep(model, bp.losses.quadratic_loss, bp.optim.SGD(model.parameters(), lr=0.5))
    with pytest.warns(bp.CaptureWarning, match="_Counting '1' attribute 'calls' changes at every call"):
        for x, y in _batches(12):
            step(x, y)
    assert step.capture is False and step.mode == "eager" and model[1].calls == 12


def test_a_numpy_scalar_setting_that_changes_is_noticed():
    """A NumPy scalar is a number a trace keeps as a constant, not an array of its shape."""
    events = {5: lambda model, opt, step: setattr(model[1], "negative_slope", np.float64(0.9))}
    _same_as_eager(events)


def test_adams_decoupled_flag_is_part_of_the_guard():
    adam = lambda params: bp.optim.Adam(params, 0.01, weight_decay=0.05)  # noqa: E731
    _same_as_eager({6: lambda model, opt, step: setattr(opt, "decoupled", True)}, optimizer=adam)


def test_a_replay_that_raises_takes_no_step():
    """A replayed step that raises wrote nothing back, so it must not count (Adam's corrections)."""

    def run(capture):
        bp.manual_seed(5)
        model = _model()
        opt = bp.optim.Adam(model.parameters(), 0.05)
        step = bp.TrainStep(model, bp.losses.quadratic_loss, opt, capture=capture)
        modes = []
        for i, (x, y) in enumerate(_batches(10)):
            if i == 7:  # the same key, but NumPy raises on the inf in the replay's first product
                x = x.copy()
                x[0, 0] = np.inf
                with np.errstate(invalid="raise", over="raise"), pytest.raises(FloatingPointError):
                    step(x, y)
                modes.append(step.mode)
                continue
            step(x, y)
            modes.append(step.mode)
        return opt.steps, [p.numpy() for p in model.parameters()], modes

    (steps, captured, modes), (eager_steps, eager, _) = run(True), run(False)
    assert modes[7] in CAPTURED_MODES and steps == eager_steps == 9, (modes, steps, eager_steps)
    for got, want in zip(captured, eager, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, strict=True)


def test_a_step_under_no_grad_fails_as_the_eager_one_does():
    bp.manual_seed(5)
    model = _model()
    step = bp.TrainStep(model, bp.losses.quadratic_loss, bp.optim.SGD(model.parameters(), lr=0.5))
    batches = list(_batches(6))
    for x, y in batches[:5]:
        step(x, y)
    before = [p.numpy().copy() for p in model.parameters()]
    with bp.no_grad(), pytest.raises(RuntimeError, match="does not require a gradient"):
        step(*batches[5])
    for p, b in zip(model.parameters(), before, strict=True):
        np.testing.assert_array_equal(p.numpy(), b, strict=True)
