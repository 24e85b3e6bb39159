"""Behaviours a one-line slip would break silently, each pinned at its edge (found by a mutation
campaign: deliberately broken copies of the library that every other test passed)."""

import warnings

import numpy as np
import pytest

import backprop as bp
from backprop.errors import ConfigError


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    return x, (x[:, 0] > 0).astype("int64")


def _model(dropout=False):
    bp.manual_seed(0)
    layers = [bp.nn.Linear(3, 5, dtype="float64"), bp.nn.Tanh()]
    layers += [bp.nn.Dropout(0.5)] if dropout else []
    return bp.nn.Sequential(*layers, bp.nn.Linear(5, 2, dtype="float64"))


def test_exponential_decay_compounds_over_epochs():
    model = _model()
    opt = bp.optim.SGD(model.parameters(), lr=0.8)
    bp.fit(model, bp.losses.cross_entropy, opt, _data(), 3, 8, verbose=0,
           callbacks=[bp.optim.ExponentialDecay(opt, 0.5)])  # fmt: skip
    assert opt.lr == 0.8 * 0.5**3


@pytest.mark.parametrize(
    "scores, patience, min_delta, stops_after",
    [
        ([1.0, 0.9, 0.9, 0.9], 2, 0.0, 4),  # equal is no improvement
        ([1.0, 0.75, 0.75, 0.75], 2, 0.25, 3),  # an improvement by exactly min_delta is none
        ([1.0, 0.9, 0.95, 0.89, 0.95, 0.95], 2, 0.0, 6),  # an improvement resets the count
        ([1.0, 1.1], 1, 0.0, 2),  # patience 1: the first epoch without improvement stops
    ],
)
def test_early_stopping_patience_and_min_delta_at_their_edges(scores, patience, min_delta, stops_after):
    stop = bp.train.EarlyStopping("loss", patience=patience, min_delta=min_delta, restore_best=False)
    decisions = [stop.on_epoch_end(None, {"loss": s}) for s in scores]
    assert decisions.index(True) + 1 == stops_after, decisions


def test_an_accuracy_monitor_improves_upwards():
    stop = bp.train.EarlyStopping("val_accuracy", patience=1, restore_best=False)
    assert [stop.on_epoch_end(None, {"val_accuracy": a}) for a in (0.5, 0.6, 0.55)] == [False, False, True]


def test_evaluate_and_predict_run_in_eval_mode():
    """Dropout off: the same numbers every call, and those of the model in eval mode."""
    x, y = _data()
    model = _model(dropout=True)
    first = bp.evaluate(model, bp.losses.cross_entropy, (x, y))
    assert bp.evaluate(model, bp.losses.cross_entropy, (x, y)) == first
    model.eval()
    with bp.no_grad():
        want = bp.to_numpy(model(bp.tensor(x, dtype="float64")).data)
    model.train()
    np.testing.assert_array_equal(bp.to_numpy(bp.predict(model, x)), want, strict=True)
    assert all(m.training for _, m in model.named_modules())


@pytest.mark.parametrize("label", [2, -1])
def test_a_label_just_outside_the_classes_is_refused(label):
    x, y = _data()
    y[5] = label
    model = _model()
    with pytest.raises(ConfigError, match=rf"label {label} at index 5"):
        bp.fit(model, bp.losses.cross_entropy, bp.optim.SGD(model.parameters(), 0.1), (x, y), 1, 8, verbose=0)


def test_load_state_dict_casts_to_each_parameters_dtype():
    model = _model()
    state = {k: bp.to_numpy(v).astype("float32") + 1 for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    for name, p in model.named_parameters():
        assert bp.backend.dtype_name(p.dtype) == "float64"
        np.testing.assert_array_equal(p.numpy(), state[name].astype("float64"), strict=True)


def test_optimizer_state_loads_in_each_parameters_dtype():
    model = _model()
    opt = bp.optim.Adam(model.parameters(), 0.01)
    bp.fit(model, bp.losses.cross_entropy, opt, _data(), 1, 8, verbose=0)
    saved = opt.state_dict()
    saved["state"] = [{k: v.astype("float32") for k, v in s.items()} for s in saved["state"]]
    opt.load_state_dict(saved)
    assert {bp.backend.dtype_name(a.dtype) for s in opt.state for a in s.values()} == {"float64"}


def _orders(shuffle, epochs=3):
    bp.manual_seed(1)
    batches = bp.data.Batches(np.zeros((12, 3)), np.arange(12), 4, shuffle=shuffle)
    return [[bp.to_numpy(t).tolist() for _, t in batches] for _ in range(epochs)]


def test_shuffling_gives_a_new_order_every_epoch_and_none_without_it():
    shuffled = _orders(True)
    flat = [sum(epoch, []) for epoch in shuffled]
    assert all(sorted(order) == list(range(12)) for order in flat)
    assert flat[0] != list(range(12)) and len({tuple(o) for o in flat}) == 3
    assert all(sum(epoch, []) == list(range(12)) for epoch in _orders(False))


def test_fit_shuffles_by_default():
    x = np.zeros((12, 3))
    model = bp.nn.Sequential(bp.nn.Linear(3, 12, dtype="float64"))
    order = []
    bp.fit(model, lambda out, t: order.extend(bp.to_numpy(t).tolist()) or bp.losses.cross_entropy(out, t),
           bp.optim.SGD(model.parameters(), 0.1), (x, np.arange(12)), 1, 12, verbose=0, metrics=())  # fmt: skip
    assert sorted(order) == list(range(12)) and order != list(range(12))


def test_deleting_a_module_attribute_is_noticed_by_a_captured_step():
    class Scaled(bp.nn.Module):
        def __init__(self):
            self.scale = 0.5

        def forward(self, x):
            return x * getattr(self, "scale", 1.0)

    def run(capture):
        bp.manual_seed(0)
        model = bp.nn.Sequential(bp.nn.Linear(3, 4, dtype="float64"), Scaled(), bp.nn.Linear(4, 2, dtype="float64"))
        step = bp.TrainStep(model, bp.losses.mse_loss, bp.optim.SGD(model.parameters(), 0.1), capture=capture)
        x, y = np.ones((5, 3)), np.zeros((5, 2))
        for i in range(10):
            if i == 6:
                del model[1].scale
            step(x, y)
        return [p.numpy() for p in model.parameters()]

    with warnings.catch_warnings():
        warnings.simplefilter("error", bp.CaptureWarning)
        captured = run(True)
    for got, want in zip(captured, run(False), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_a_loaded_optimizer_state_with_other_settings_is_noticed_by_a_captured_step():
    def run(capture):
        model = _model()
        opt = bp.optim.SGD(model.parameters(), 0.1, momentum=0.5)
        step = bp.TrainStep(model, bp.losses.mse_loss, opt, capture=capture)
        x, y = np.ones((5, 3)), np.zeros((5, 2))
        for i in range(10):
            if i == 6:
                saved = opt.state_dict()
                saved["hyper"]["momentum"] = 0.9
                opt.load_state_dict(saved)
            step(x, y)
        return [p.numpy() for p in model.parameters()]

    for got, want in zip(run(True), run(False), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_a_new_target_shape_is_a_capture_of_its_own():
    model = _model()
    step = bp.TrainStep(model, bp.losses.cross_entropy, bp.optim.SGD(model.parameters(), 0.1))
    x, labels = _data(8)
    for _ in range(5):
        step(x, labels)
    assert step.mode in {"traced", "jit"}
    step(x, np.eye(2)[labels])  # one-hot rows: the same inputs, another step
    assert step.mode == "eager"
