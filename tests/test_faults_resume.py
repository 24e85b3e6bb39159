"""Resume is exact with the library's own callbacks, and a checkpoint that does not fit changes
nothing: the model, the optimizer, the callbacks and the random state stay as they were."""

import json

import numpy as np
import pytest

import backprop as bp
from backprop.io import FileFormatError


def _model():
    bp.manual_seed(0)
    return bp.nn.mlp([2, 12, 2], "tanh", dtype="float64")


def _data():
    x, y = bp.data.spirals(60)
    return x.astype("float64"), y


def _run(epochs, callbacks_for, optimizer=None, **options):
    model = _model()
    opt = (optimizer or (lambda ps: bp.optim.SGD(ps, lr=0.2, momentum=0.9)))(model.parameters())
    callbacks = callbacks_for(model, opt)
    history = bp.fit(model, bp.losses.cross_entropy, opt, _data(), epochs, 16, validation=_data(),
                     callbacks=callbacks, verbose=0, **options)  # fmt: skip
    return model, opt, history


def _assert_same_run(a, b):
    for p, q in zip(a[0].parameters(), b[0].parameters(), strict=True):
        np.testing.assert_array_equal(p.numpy(), q.numpy(), strict=True)
    assert a[1].lr == b[1].lr and a[1].steps == b[1].steps
    assert a[2]["loss"] == b[2]["loss"] and a[2]["epoch"] == b[2]["epoch"]


def test_a_resumed_run_with_a_decaying_learning_rate_is_the_uninterrupted_one(tmp_path):
    decay = lambda model, opt: [bp.optim.ExponentialDecay(opt, gamma=0.7)]  # noqa: E731
    whole = _run(5, decay)
    _run(2, decay, checkpoint=tmp_path / "run.npz")
    _assert_same_run(_run(5, decay, resume=tmp_path / "run.npz"), whole)


@pytest.mark.parametrize("interrupted_after", [2, 3, 5])
def test_a_resumed_run_with_early_stopping_stops_where_the_uninterrupted_one_did(tmp_path, interrupted_after):
    def stopping(model, opt):  # patience 2 at lr 3: stops after a few epochs, with its best weights back
        return [bp.train.EarlyStopping("val_loss", patience=2, min_delta=1e-3)]

    fast = lambda ps: bp.optim.SGD(ps, lr=3.0, momentum=0.9)  # noqa: E731
    whole = _run(30, stopping, optimizer=fast)
    stopped_at = whole[2]["epoch"][-1]
    assert stopped_at < 30, "the run must stop early for this test to mean anything"
    _run(min(interrupted_after, stopped_at), stopping, optimizer=fast, checkpoint=tmp_path / "run.npz")
    _assert_same_run(_run(30, stopping, optimizer=fast, resume=tmp_path / "run.npz"), whole)


def _checkpoint(tmp_path):
    path = tmp_path / "run.npz"
    _run(2, lambda model, opt: [], optimizer=lambda ps: bp.optim.Adam(ps, 0.01), checkpoint=path)
    return path


def _rewrite(path, change):
    arrays = dict(np.load(path))
    meta = json.loads(str(arrays["meta"]))
    change(arrays, meta)
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


def _set(field, value):
    def change(arrays, meta):
        *parents, last = field.split(".")
        target = meta
        for key in parents:
            target = target[key]
        target[last] = value

    return change


def _put(key, value):
    return lambda arrays, meta: arrays.update({key: value(arrays)})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("optimizer.hyper.lr", -5), "learning rate must be positive, got -5"),
        (_set("optimizer.hyper.beta1", float("nan")), "beta1 must be finite"),
        (_set("optimizer.hyper.momentum", 0.9), "Adam has no hyper-parameter 'momentum'"),
        (_set("optimizer.hyper.steps", 2.5), "the step count must be a whole number"),
        (_set("rng_state", {"bit_generator": "PCG64", "state": "nonsense"}), "a random state that cannot be restored"),
        (_put("optimizer/0/m", lambda arrays: np.zeros(1)), "state 'm' of parameter 0 is float64 (1,)"),
        (_put("optimizer/3/velocity", lambda arrays: arrays["optimizer/3/m"]), "keeps no state 'velocity'"),
        (_put("optimizer/9/m", lambda arrays: arrays["optimizer/3/m"]), "for none of its 4 parameters"),
        (_put("optimizer/4/m", lambda arrays: arrays["optimizer/3/m"]), "for none of its 4 parameters"),  # just past
        (_put("optimizer/0/m", lambda arrays: arrays["optimizer/0/m"].astype("int64")), "not a floating array"),
        (lambda arrays, meta: arrays.pop("model/2.bias"), r"missing \['2.bias'\]"),
        (_put("model/2.bias", lambda arrays: np.zeros(3)), "'2.bias': state dict has shape (3,)"),
        (_set("callbacks", [{"type": "EarlyStopping", "values": {}}]), "callbacks ['EarlyStopping'], this run has []"),
        (_set("rng_state.state.state", -1), "a random state that cannot be restored"),
        (_set("epoch", "1"), "metadata: a malformed epoch"),
        (_set("epoch", 1.5), "metadata: a malformed epoch"),
        (_set("history", 5), "metadata: a malformed history"),
        (_set("optimizer.count", "2"), "metadata: a malformed optimizer parameter count"),
        (_set("optimizer.count", 10**12), "optimizer state for 1000000000000 parameters, Adam has 4"),
        (_set("optimizer.hyper", [1]), "metadata: a malformed optimizer hyper-parameters"),
        (_set("callbacks", {"type": "EarlyStopping"}), "metadata: a malformed callbacks"),
        (_put("optimizer/0", lambda arrays: arrays["optimizer/0/m"]), "'optimizer/0' for none of its 4 parameters"),
    ],
)  # fmt: skip
def test_a_checkpoint_that_does_not_fit_changes_nothing(tmp_path, change, message):
    path = _checkpoint(tmp_path)
    _rewrite(path, change)
    model = _model()
    opt = bp.optim.Adam(model.parameters(), 0.01)
    x, y = _data()
    bp.fit(model, bp.losses.cross_entropy, opt, (x, y), 1, 16, verbose=0)  # some optimizer state
    states = [{k: bp.to_numpy(v).copy() for k, v in s.items()} for s in opt.state]
    before = ([p.numpy().copy() for p in model.parameters()], opt.lr, opt.steps, states, bp.backend.get_rng_state())
    with pytest.raises(FileFormatError, match=rf"run.npz: .*{_escaped(message)}"):
        bp.io.load_checkpoint(path, model, opt)
    assert opt.lr == before[1] and opt.steps == before[2] and bp.backend.get_rng_state() == before[4]
    for p, b in zip(model.parameters(), before[0], strict=True):
        np.testing.assert_array_equal(p.numpy(), b, strict=True)
    for state, saved in zip(opt.state, before[3], strict=True):
        assert state.keys() == saved.keys()
        for key in state:
            np.testing.assert_array_equal(bp.to_numpy(state[key]), saved[key], strict=True)


def _escaped(message: str) -> str:
    return message if message.startswith("missing") else __import__("re").escape(message)


def test_a_checkpoint_of_another_optimizer_or_callbacks_is_refused_by_name(tmp_path):
    path = _checkpoint(tmp_path)
    model = _model()
    with pytest.raises(FileFormatError, match="checkpoint holds an Adam state, not an SGD"):
        bp.io.load_checkpoint(path, model, bp.optim.SGD(model.parameters(), 0.1))
    with pytest.raises(FileFormatError, match=r"callbacks \[\], this run has \['EarlyStopping'\]"):
        bp.io.load_checkpoint(path, model, bp.optim.Adam(model.parameters()), [bp.train.EarlyStopping()])


def test_a_checkpoint_from_before_callbacks_were_saved_resumes_with_fresh_callbacks(tmp_path):
    path = _checkpoint(tmp_path)
    _rewrite(path, lambda arrays, meta: meta.pop("callbacks"))
    model = _model()
    stopping = bp.train.EarlyStopping()
    with pytest.warns(UserWarning, match="holds no callback state .an older checkpoint.: EarlyStopping start afresh"):
        meta = bp.io.load_checkpoint(path, model, bp.optim.Adam(model.parameters(), 0.01), [stopping])
    assert meta["epoch"] == 2 and stopping.state_dict()["waited"] == 0


def test_fit_refuses_a_malformed_checkpoint_before_changing_the_model(tmp_path):
    path = _checkpoint(tmp_path)
    _rewrite(path, _set("epoch", "1"))
    model = _model()
    before = [p.numpy().copy() for p in model.parameters()]
    with pytest.raises(FileFormatError, match="a malformed epoch"):
        bp.fit(model, bp.losses.cross_entropy, bp.optim.Adam(model.parameters(), 0.01), _data(), 3, 16,
               verbose=0, resume=path)  # fmt: skip
    for p, b in zip(model.parameters(), before, strict=True):
        np.testing.assert_array_equal(p.numpy(), b, strict=True)


def _stopping_state(**values):
    return {"type": "EarlyStopping", "values": {"stopped": False, **values}}


def _stopping_checkpoint(tmp_path):
    path = tmp_path / "run.npz"
    _run(2, lambda model, opt: [bp.train.EarlyStopping("val_loss", patience=5)], checkpoint=path)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_put("callbacks/0/best/0.weight", lambda arrays: np.zeros((2, 2))), "'0.weight': state dict has shape (2, 2)"),
        (lambda arrays, meta: arrays.pop("callbacks/0/best/2.bias"), r"missing \['2.bias'\]"),
        (_put("callbacks/0/best/zzz", lambda arrays: np.zeros(2)), "unexpected ['zzz']"),
        (_put("callbacks/5/x", lambda arrays: np.zeros(2)), "array 'callbacks/5/x' belongs to none of its 1 callbacks"),
        (_put("callbacks/0/big", lambda arrays: np.zeros(10_000)), "'callbacks/0/big' of float64 (10000,)"),
        (_set("callbacks", [_stopping_state(best=1.0, waited=-5)]), "best=1.0, waited=-5 is impossible"),
        (_set("callbacks", [_stopping_state(best=float("nan"), waited=0)]), "best=nan, waited=0 is impossible"),
        (_set("padding", " " * (16 << 20)), "array 'meta' of <U"),  # over 64 MiB as UTF-32
    ],
)  # fmt: skip
def test_early_stopping_state_that_does_not_fit_the_model_is_refused_before_anything_changes(tmp_path, change, message):
    path = _stopping_checkpoint(tmp_path)
    _rewrite(path, change)
    model = _model()
    stopping = bp.train.EarlyStopping("val_loss", patience=5)
    before = [p.numpy().copy() for p in model.parameters()]
    with pytest.raises(FileFormatError, match=rf"run.npz: .*{_escaped(message)}"):
        bp.io.load_checkpoint(path, model, bp.optim.SGD(model.parameters(), lr=0.2, momentum=0.9), [stopping])
    assert stopping.state_dict() == bp.train.EarlyStopping().state_dict()
    for p, b in zip(model.parameters(), before, strict=True):
        np.testing.assert_array_equal(p.numpy(), b, strict=True)


def test_metadata_nested_too_deep_for_json_is_one_clear_error(tmp_path):
    path = _checkpoint(tmp_path)
    arrays = dict(np.load(path))
    arrays["meta"] = np.array(str(arrays["meta"])[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}")
    np.savez(path, **arrays)
    model = _model()
    with pytest.raises(FileFormatError, match="run.npz: not a readable backprop checkpoint .metadata: RecursionError"):
        bp.io.load_checkpoint(path, model, bp.optim.Adam(model.parameters(), 0.01))
