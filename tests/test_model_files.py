"""Models saved with their architecture (issue 12): `save_model`/`load_model` in .npz and
.safetensors, `predict_classes`, and the `backprop evaluate`/`backprop predict` commands."""

import importlib.util
import json
import re

import numpy as np
import pytest

import backprop as bp
from backprop.cli import main
from backprop.io import MODEL_KEY, FileFormatError

SUFFIXES = [".npz"] + ([".safetensors"] if importlib.util.find_spec("safetensors") else [])
X = np.random.default_rng(1).normal(size=(7, 5))


def _model():
    bp.manual_seed(4)
    inner = bp.nn.Sequential(bp.nn.Linear(6, 4, bias=False, dtype="float64"), bp.nn.LeakyReLU(0.2))
    return bp.nn.Sequential(bp.nn.Linear(5, 6, dtype="float64"), bp.nn.Tanh(), bp.nn.Dropout(0.25), inner,
                            bp.nn.Linear(4, 3, dtype="float64"), bp.nn.Softmax(axis=1))  # fmt: skip


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_saved_model_comes_back_without_its_code_and_gives_the_same_outputs(tmp_path, suffix):
    model, path = _model(), tmp_path / f"m{suffix}"
    bp.save_model(model, path, loss="nll")
    bp.manual_seed(9)
    loaded = bp.load_model(path)
    assert repr(loaded) == repr(model)
    assert loaded.layers[3].layers[1].negative_slope == 0.2 and loaded.layers[2].p == 0.25
    assert loaded.layers[5].axis == 1 and loaded.layers[0].weight.dtype == model.layers[0].weight.dtype
    np.testing.assert_array_equal(bp.to_numpy(bp.predict(loaded, X)), bp.to_numpy(bp.predict(model, X)))
    assert bp.io.model_info(path)["loss"] == "nll"
    after = bp.randn(4).numpy()
    bp.manual_seed(9)
    np.testing.assert_array_equal(bp.randn(4).numpy(), after)  # loading drew no random numbers


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_load_weights_reads_a_model_file_and_load_model_refuses_a_weights_file(tmp_path, suffix):
    model = _model()
    bp.save_model(model, tmp_path / f"m{suffix}")
    other = _model()
    bp.io.load_weights(other, tmp_path / f"m{suffix}")
    bp.io.save_weights(model, tmp_path / f"w{suffix}")
    with pytest.raises(FileFormatError, match=r"holds weights but no architecture .*use load_weights"):
        bp.load_model(tmp_path / f"w{suffix}")


class Scale(bp.nn.Module):
    def __init__(self, factor: float):
        self.factor = factor

    def forward(self, x):
        return x * self.factor


class ScaleWithConfig(Scale):
    def config(self):
        return {"factor": self.factor}


def test_a_layer_that_cannot_describe_itself_is_named_and_nothing_is_written(tmp_path):
    path = tmp_path / "m.npz"
    path.write_bytes(b"the old file")
    model = bp.nn.Sequential(bp.nn.Linear(5, 2), Scale(2.0))
    with pytest.raises(bp.errors.ConfigError, match=r"model\[1\] is Scale, which save_model cannot describe"):
        bp.save_model(model, path)
    assert path.read_bytes() == b"the old file" and sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


def test_a_layer_of_your_own_comes_back_through_custom_layers(tmp_path):
    model = bp.nn.Sequential(bp.nn.Linear(5, 2, dtype="float64"), ScaleWithConfig(3.0))
    bp.save_model(model, tmp_path / "m.npz")
    with pytest.raises(FileFormatError, match=r"unknown layer type 'ScaleWithConfig' .*custom_layers"):
        bp.load_model(tmp_path / "m.npz")
    loaded = bp.load_model(tmp_path / "m.npz", custom_layers=[ScaleWithConfig])
    np.testing.assert_array_equal(bp.to_numpy(bp.predict(loaded, X)), bp.to_numpy(bp.predict(model, X)))


def _rewrite_architecture(path, edit):
    arrays = dict(np.load(path, allow_pickle=False))
    meta = json.loads(str(arrays[MODEL_KEY]))
    arrays[MODEL_KEY] = np.array(json.dumps(edit(meta)) if callable(edit) else edit)
    np.savez(path, **arrays)


def _nest(depth):
    config = {"type": "Linear", "in_features": 5, "out_features": 2, "bias": True}
    for _ in range(depth):
        config = {"type": "Sequential", "layers": [config]}
    return config


@pytest.mark.parametrize(
    "edit, message",
    [
        ("not json", "not a readable backprop model"),
        (json.dumps({"format": "something else", "architecture": {}}), "not a readable backprop model"),
        (lambda m: {**m, "architecture": {"type": "Conv2d"}}, r"unknown layer type 'Conv2d'"),
        (lambda m: {**m, "architecture": {"type": "Linear", "in_features": -5, "out_features": 2, "bias": True}},
         r"Linear in_features=-5 is not a valid value"),
        (lambda m: {**m, "architecture": {"type": "Linear", "in_features": 5, "out_features": 2, "bias": 1}},
         r"Linear bias=1 is not a valid value"),
        (lambda m: {**m, "architecture": {"type": "Linear", "in_features": 5, "out_features": 2}},
         r"Linear takes the settings \['bias', 'in_features', 'out_features'\]"),
        (lambda m: {**m, "architecture": {"type": "Sequential", "layers": [
            {"type": "Linear", "in_features": 4, "out_features": 2, "bias": True}]}},
         r"model\[0\]: Linear needs '0.weight' of shape \(4, 2\), the file holds shape \(5, 2\)"),
        (lambda m: {**m, "architecture": {"type": "Sequential", "layers": [  # checked before it is allocated
            {"type": "Linear", "in_features": 10**6, "out_features": 10**6, "bias": True}]}},
         r"Linear needs '0.weight' of shape \(1000000, 1000000\), the file holds shape \(5, 2\)"),
        (lambda m: {**m, "version": 99}, "of version 99; this backprop reads version 1"),
        (lambda m: {**m, "loss": "hinge"}, "not a readable backprop model"),
        (lambda m: {**m, "architecture": _nest(100)}, "nested more than 64 deep"),
        (lambda m: {**m, "architecture": {"type": "Sequential", "layers": "Linear"}}, "a list of 'layers'"),
    ],
)  # fmt: skip
def test_a_malformed_architecture_is_one_line_naming_the_file(tmp_path, edit, message):
    path = tmp_path / "m.npz"
    bp.save_model(bp.nn.Sequential(bp.nn.Linear(5, 2)), path)
    _rewrite_architecture(path, edit)
    with pytest.raises(FileFormatError, match=re.escape(str(path)) + ".*" + message):
        bp.load_model(path)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs PyTorch")
def test_a_model_loads_onto_the_current_backend(tmp_path):
    bp.save_model(_model(), tmp_path / "m.npz")
    with bp.use_backend("torch"):
        loaded = bp.load_model(tmp_path / "m.npz")
    assert bp.backend_of(loaded.parameters()[0].xp).name == "torch"


def test_predict_classes_takes_the_largest_output_or_thresholds_one_output():
    bp.manual_seed(0)
    model = bp.nn.mlp([5, 4, 3], "tanh", dtype="float64")
    want = np.argmax(bp.to_numpy(bp.predict(model, X)), axis=1)
    np.testing.assert_array_equal(bp.to_numpy(bp.predict_classes(model, X)), want)
    single = bp.nn.mlp([5, 1], output_activation="sigmoid", dtype="float64")
    out = bp.to_numpy(bp.predict(single, X))[:, 0]
    np.testing.assert_array_equal(bp.to_numpy(bp.predict_classes(single, X)), (out > 0.5).astype(np.int64))
    np.testing.assert_array_equal(bp.to_numpy(bp.predict_classes(single, X, threshold=0.7)), out > 0.7)


def test_the_commands_evaluate_and_predict_a_model_that_train_saved(tmp_path, capsys):
    model_path = str(tmp_path / "m.npz")
    assert main(["train", "--epochs", "2", "--verbose", "0", "--save", model_path]) == 0
    final = re.search(r"test accuracy (\d\.\d{4})", capsys.readouterr().out).group(1)
    assert main(["evaluate", model_path]) == 0
    assert "cross_entropy loss" in (out := capsys.readouterr().out) and f"accuracy {final}" in out
    x, _ = bp.data.digits("test")
    np.save(tmp_path / "x.npy", x[:9])
    np.savetxt(tmp_path / "x.csv", x[:9], delimiter=",")
    want = bp.to_numpy(bp.predict_classes(bp.load_model(model_path), x[:9]))
    assert main(["predict", model_path, str(tmp_path / "x.npy")]) == 0
    assert capsys.readouterr().out.split() == [str(c) for c in want]
    assert main(["predict", model_path, str(tmp_path / "x.csv"), "--output", str(tmp_path / "p.csv")]) == 0
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "p.csv", dtype=np.int64), want)
    assert main(["predict", model_path, str(tmp_path / "x.npy"), "--outputs", "--output", str(tmp_path / "o.npy")]) == 0
    assert np.load(tmp_path / "o.npy").shape == (9, 10)


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "{m}", "--dataset", "spirals"], "spirals (test) has 2 inputs per sample; the model in"),
        (["predict", "{m}", "{tmp}/wide.npy"], "wide.npy has 3 inputs per sample; the model in"),
        (["predict", "{m}", "{tmp}/x.json"], "inputs are read from .npy, .csv, .txt files"),
        (["predict", "{m}", "{tmp}/wide.npy", "--output", "{tmp}/p.txt"], "predictions are written as .npy or .csv"),
        (["evaluate", "{tmp}/wide.npy"], "a model file is a .npz or .safetensors"),
        (["evaluate", "{tmp}/none.npz"], "none.npz: no such model file"),
        (["predict", "{m}", "{tmp}/wide.npy", "--batch-size", "0"], "expected a positive integer"),
    ],
)
def test_the_model_commands_name_what_is_wrong_and_write_nothing(tmp_path, capsys, args, message):
    model_path = tmp_path / "m.npz"
    bp.save_model(bp.nn.mlp([64, 8, 10], "relu"), model_path, loss="cross_entropy")
    np.save(tmp_path / "wide.npy", np.ones((4, 3)))
    argv = [a.format(m=model_path, tmp=tmp_path) for a in args]
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    assert code in (1, 2) and message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "wide.npy"]


class Typed(Scale):
    def config(self):
        return {"type": "Linear", "factor": self.factor}


@pytest.mark.parametrize(
    "model, message",
    [
        (lambda: (lambda layer: bp.nn.Sequential(layer, bp.nn.ReLU(), layer))(bp.nn.Linear(3, 3)),
         r"model\[2\] is the same layer as model\[0\]: save_model cannot store shared layers"),
        (lambda: bp.nn.Sequential(bp.nn.Linear(3, 3), bp.nn.LeakyReLU(float("nan"))),
         r"model\[1\]: LeakyReLU negative_slope=nan is not a valid value"),
        (lambda: bp.nn.Sequential(bp.nn.Linear(3, 3), bp.nn.LeakyReLU(True)),
         r"model\[1\]: LeakyReLU negative_slope=True is not a valid value"),
        (lambda: bp.nn.Sequential(bp.nn.Linear(3, 3), Typed(2.0)), r"model\[1\]: Typed.config\(\) must give a dict"),
        (lambda: bp.nn.Sequential(bp.nn.Linear(3, 3), ScaleWithConfig(np.array([1.0, 2.0]))),
         "the model's settings are not plain JSON values"),
        (lambda: _deep(70), "nested more than 64 deep cannot be saved"),
    ],
)  # fmt: skip
def test_what_load_model_could_not_build_back_is_refused_before_writing(tmp_path, model, message):
    with pytest.raises(bp.errors.ConfigError, match=message):
        bp.save_model(model(), tmp_path / "m.npz")
    assert list(tmp_path.iterdir()) == []


def _deep(depth):
    model = bp.nn.Linear(3, 3)
    for _ in range(depth):
        model = bp.nn.Sequential(model)
    return model


def test_numpy_scalar_settings_are_saved_as_numbers(tmp_path):
    model = bp.nn.Sequential(bp.nn.Linear(5, 3), bp.nn.LeakyReLU(np.float32(0.25)), bp.nn.Dropout(np.float64(0.5)),
                             bp.nn.Softmax(axis=np.int64(1)))  # fmt: skip
    bp.save_model(model, tmp_path / "m.npz")
    loaded = bp.load_model(tmp_path / "m.npz")
    assert (loaded.layers[1].negative_slope, loaded.layers[2].p, loaded.layers[3].axis) == (0.25, 0.5, 1)


def test_load_weights_refuses_a_model_entry_that_is_no_model(tmp_path):
    model = bp.nn.Linear(3, 2)
    np.savez(tmp_path / "w.npz", weight=np.ones((3, 2), "float32"), bias=np.ones(2, "float32"),
             __backprop_model__=np.arange(10))  # fmt: skip
    with pytest.raises(FileFormatError, match="'__backprop_model__' of int64 \\(10,\\) is no model"):
        bp.io.load_weights(model, tmp_path / "w.npz")


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs PyTorch")
def test_predict_casts_inputs_to_the_models_dtype_on_any_backend(tmp_path, capsys):
    bp.save_model(bp.nn.mlp([4, 3, 2], "relu"), tmp_path / "m.npz", loss="cross_entropy")
    np.savetxt(tmp_path / "x.csv", X[:, :4], delimiter=",")  # float64 rows for a float32 model
    np.save(tmp_path / "i.npy", np.arange(8).reshape(2, 4))  # integers
    for rows in ("x.csv", "i.npy"):
        assert main(["predict", str(tmp_path / "m.npz"), str(tmp_path / rows), "--backend", "torch"]) == 0
    assert len(capsys.readouterr().out.split()) == 9


def test_the_model_commands_refuse_a_model_that_does_not_fit_and_inputs_that_are_no_numbers(tmp_path, capsys):
    bp.save_model(bp.nn.mlp([64, 8, 3], "relu"), tmp_path / "three.npz", loss="cross_entropy")
    bp.save_model(bp.nn.Sequential(bp.nn.ReLU()), tmp_path / "empty.npz")
    bp.save_model(bp.nn.mlp([64, 4], "relu"), tmp_path / "four.npz", loss="cross_entropy")
    (tmp_path / "blank.csv").write_text("")
    np.savetxt(tmp_path / "nan.csv", np.array([[1.0, 2.0, 3.0, 4.0] * 16, [np.nan] * 64]), delimiter=",")
    cases = [
        (["evaluate", "three.npz"], "digits has 10 classes; the model in"),
        (["evaluate", "empty.npz"], "the model has no parameters"),
        (["predict", "four.npz", "blank.csv"], "blank.csv: needs one row of numbers per sample"),
        (["predict", "four.npz", "nan.csv"], "nan.csv: holds inf or NaN (row 1)"),
        (["predict", "four.npz", "nan.csv", "--output", "no/such/p.csv"], "no/such/p.csv: no folder"),
    ]
    for args, message in cases:
        argv = [str(tmp_path / a) if a.endswith((".npz", ".csv")) and "/" not in a else a for a in args]
        argv = [str(tmp_path / a) if "/" in a and not a.startswith(str(tmp_path)) else a for a in argv]
        assert main(argv) == 1, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "no").exists()


def test_predict_thresholds_a_logit_at_zero_when_the_model_was_saved_with_bce_logits(tmp_path, capsys):
    model = bp.nn.Linear(1, 1, init="zeros", dtype="float64")
    with bp.no_grad():
        model.weight.data = model.weight.xp.ones((1, 1), dtype=model.weight.data.dtype)
    bp.save_model(model, tmp_path / "logit.npz", loss="bce_logits")
    bp.save_model(model, tmp_path / "prob.npz", loss="bce")
    np.savetxt(tmp_path / "x.csv", np.array([[0.25], [-0.25], [0.75]]), delimiter=",")
    assert main(["predict", str(tmp_path / "logit.npz"), str(tmp_path / "x.csv")]) == 0
    assert capsys.readouterr().out.split() == ["1", "0", "1"]  # p = sigmoid(logit) > 1/2
    assert main(["predict", str(tmp_path / "prob.npz"), str(tmp_path / "x.csv")]) == 0
    assert capsys.readouterr().out.split() == ["0", "0", "1"]  # a probability above 1/2
