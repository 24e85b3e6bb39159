"""What users pass (issue 12): arrays, Tensors, models and loss names are accepted where they read
naturally; anything else is one line naming what was passed and what is expected."""

import importlib.util
import inspect
import re
import subprocess
import sys

import numpy as np
import pytest

import backprop as bp
from backprop.errors import ConfigError

X = np.random.default_rng(0).normal(size=(6, 4))
Y = np.array([0, 1, 0, 1, 1, 0])


def _model():
    bp.manual_seed(0)
    return bp.nn.mlp([4, 3, 2], "tanh", dtype="float64")


def test_a_model_takes_host_arrays_lists_and_its_backends_arrays():
    model = _model()
    want = bp.to_numpy(model(bp.tensor(X)).data)
    for given in (X, X.tolist(), bp.get_backend().asarray(X)):
        np.testing.assert_array_equal(bp.to_numpy(model(given).data), want)
    assert model(X.astype("float32")).data.dtype == model.layers[0].weight.data.dtype  # cast to the parameters'


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs PyTorch")
def test_a_host_array_moves_to_the_models_backend_and_another_backends_array_is_named():
    import torch

    model = _model()
    with pytest.raises(ConfigError, match=r"parameters are numpy arrays and the input is a torch array"):
        model(torch.ones(6, 4))
    model.to("torch")
    out = model(X)
    assert isinstance(out.data, torch.Tensor) and out.data.dtype == torch.float64


@pytest.mark.parametrize("bad, message", [("abc", "takes a Tensor or an array, got str"),
                                          (np.array(["a"]), "takes numbers, got an array of <U1")])  # fmt: skip
def test_a_model_given_something_else_says_what_it_takes(bad, message):
    with pytest.raises(ConfigError, match=message):
        _model()(bad)


def test_fit_evaluate_and_predict_take_tensors_and_loss_names():
    model = _model()
    history = bp.fit(model, "cross_entropy", bp.optim.SGD(model, lr=0.1), (bp.tensor(X), bp.tensor(Y)), 2,
                     batch_size=3, verbose=0, shuffle=False)  # fmt: skip
    twin = _model()
    bp.fit(twin, bp.losses.cross_entropy, bp.optim.SGD(twin.parameters(), lr=0.1), (X, Y), 2, batch_size=3,
           verbose=0, shuffle=False)  # fmt: skip
    for (name, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items(), strict=True):
        np.testing.assert_array_equal(bp.to_numpy(a), bp.to_numpy(b), err_msg=name)
    assert len(history.epochs) == 2
    assert bp.evaluate(model, "cross_entropy", (bp.tensor(X), bp.tensor(Y))) == bp.evaluate(
        model, bp.losses.cross_entropy, (X, Y)
    )
    np.testing.assert_array_equal(bp.to_numpy(bp.predict(model, bp.tensor(X))), bp.to_numpy(bp.predict(model, X)))


UNKNOWN = r"unknown loss 'crossentropy'; known losses: .*cross_entropy"
NOT_CALLABLE = r"loss must be a function loss\(outputs, targets\) or a name, got int"


@pytest.mark.parametrize("loss, message", [("crossentropy", UNKNOWN), (3, NOT_CALLABLE)])
def test_an_unknown_loss_is_named_before_training(loss, message):
    model = _model()
    before = bp.to_numpy(model.layers[0].weight.data).copy()
    with pytest.raises(ConfigError, match=message):
        bp.fit(model, loss, bp.optim.SGD(model, lr=0.1), (X, Y), 1, verbose=0)
    np.testing.assert_array_equal(bp.to_numpy(model.layers[0].weight.data), before)
    with pytest.raises(ConfigError, match=message):
        bp.evaluate(model, loss, (X, Y))


def test_an_optimizer_takes_a_model_or_its_parameters_and_names_anything_else():
    model = _model()
    assert bp.optim.Adam(model, lr=0.1).params == model.parameters()
    cases = [(model.layers, "item 0 is a Linear"), (3, "takes model.parameters\\(\\) or a model, got int"),
             ([bp.tensor([1.0])], "item 0 is a Tensor without requires_grad"), ([], "got no parameters")]  # fmt: skip
    for bad, message in cases:
        with pytest.raises(ConfigError, match=message):
            bp.optim.Adam(bad, lr=0.1)


def test_to_with_a_device_name_first_says_that_a_backend_comes_first():
    model = _model()
    with pytest.raises(
        ConfigError, match=r"to\(\) takes a backend first .* got 'cpu'; e.g. to\('torch', device='cpu'\)"
    ):
        model.to("cpu")
    with pytest.raises(bp.backends.BackendError, match="runs on the CPU only, not on device 'cuda:3'"):
        model.to(device="cuda:3")  # a device alone is checked against the parameters' own backend
    assert model.to(device="cpu") is model


def test_evaluate_and_predict_keep_their_signatures_and_docstrings():
    for function in (bp.evaluate, bp.predict):
        assert "data" in str(inspect.signature(function)) or "inputs" in str(inspect.signature(function))
        assert function.__doc__ and function.__module__ == "backprop.train"


def test_the_command_line_tells_its_version():
    result = subprocess.run([sys.executable, "-m", "backprop", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"backprop {bp.__version__}"


def test_backprop_device_is_checked_when_a_backend_is_chosen(monkeypatch):
    before = bp.get_backend()  # resolved before the variables are set (the first use reads them)
    monkeypatch.delenv("BACKPROP_BACKEND", raising=False)
    monkeypatch.setenv("BACKPROP_DEVICE", "cuda:7")
    with pytest.raises(bp.BackendError, match=r"^BACKPROP_DEVICE='cuda:7': backend 'numpy' runs on the CPU only"):
        bp.set_backend("numpy")
    assert bp.get_backend() == before
    with bp.use_backend("numpy") as backend:  # a scoped block is the code's own choice: no environment
        assert backend.name == "numpy" and backend.device is None
    monkeypatch.setenv("BACKPROP_BACKEND", "some_other")  # the device goes with that backend, not with numpy
    assert bp.set_backend("numpy").device is None  # the conftest puts the process backend back


def test_an_uninstalled_backend_names_its_pip_extra():
    from backprop.backends import BACKENDS

    assert BACKENDS["cupy"].install_hint() == 'pip install "backprop[cuda12]" (CUDA 12; "backprop[cuda13]" for CUDA 13)'
    assert BACKENDS["torch"].install_hint() == 'pip install "backprop[torch]"'
    if not BACKENDS["cupy"].installed():
        with pytest.raises(bp.BackendError, match=re.escape('not installed: pip install "backprop[cuda12]"')):
            bp.set_backend("cupy")
