"""The command line: training on the bundled data, saving, plots, info, and one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from backprop.cli import main


def test_train_defaults_on_bundled_digits(tmp_path, capsys):
    assert main(["train", "--epochs", "8", "--no-progress", "--save", str(tmp_path / "w.npz")]) == 0
    out = capsys.readouterr().out
    assert "on digits (1437 train, 360 test)" in out
    accuracy = float(out.split("test accuracy ")[1].split()[0])
    assert accuracy > 0.9 and (tmp_path / "w.npz").is_file()


def test_train_with_capture_gives_the_same_run(capsys):
    args = ["train", "--epochs", "3", "--no-progress", "--dtype", "float64"]
    assert main(args) == 0 and main([*args, "--capture"]) == 0
    eager, captured = (
        run.split("final: ")[1].split(" after")[0] for run in capsys.readouterr().out.split("training ")[1:]
    )
    assert captured == eager and "test accuracy" in eager


def test_train_writes_a_plot(tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "run.v1" / "curves.png"  # a dot before the file name
    args = ["train", "--dataset", "spirals", "--layers", "2,8,8,1", "--activation", "tanh", "--loss", "bce",
            "--epochs", "3", "--no-progress", "--plot", str(plot)]  # fmt: skip
    assert main(args) == 0
    assert plot.stat().st_size > 1000 and (tmp_path / "run.v1" / "curves-boundary.png").stat().st_size > 1000


def test_info_lists_backends_and_blas(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "numpy" in out and "device" in out and "BLAS (NumPy)" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--dataset", "cifar"], "argument --dataset: invalid choice: 'cifar'"),
        (["train", "--layers", "64,x,10"], "--layers '64,x,10': give comma-separated integers"),
        (["train", "--layers", "784,30,10"], "digits has 64 inputs, so the first size must be 64"),
        (["train", "--backend", "tensorflow"], "unknown backend 'tensorflow'"),
        (["train", "--epochs", "0"], "argument --epochs: expected a positive integer, got '0'"),
        (["train", "--dataset", "mnist", "--data-dir", "/nonexistent"], "could not download mnist/"),
        (["train", "--lr", "-1"], "argument --lr: expected a positive number, got '-1'"),
        (["train", "--seed", "-3"], "argument --seed: expected a non-negative integer, got '-3'"),
        (["train", "--momentum", "x"], "argument --momentum: expected a number >= 0, got 'x'"),
        (["train", "--device", "cuda:7"], "backend 'numpy' runs on the CPU only, not on device 'cuda:7'"),
        (["train", "--no-progress", "--resume", "/nonexistent/run.npz"], "/nonexistent/run.npz: no such file"),
        (["train", "--save", "w.pickle"], "w.pickle: weights are saved as .npz or .safetensors"),
        (["train", "--checkpoint", "run.ckpt"], "run.ckpt: checkpoints are .npz files"),
        (["train", "--plot", "curves.xyz"], "curves.xyz: cannot write a .xyz plot; use one of"),
    ],
)
def test_errors_are_one_line_without_traceback(args, message, tmp_path):
    env = {"PATH": "", "XDG_CACHE_HOME": str(tmp_path), "HOME": str(tmp_path), "no_proxy": "*",
           "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "backprop.cli", *args], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_a_resume_from_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["train", "--epochs", "1", "--no-progress", "--save", str(tmp_path / "w.npz")]) == 0
    assert main(["train", "--epochs", "2", "--no-progress", "--resume", str(tmp_path / "w.npz")]) == 1
    assert "w.npz: not a backprop checkpoint (no metadata)" in capsys.readouterr().err


def test_a_checkpoint_with_malformed_metadata_is_one_line(tmp_path, capsys):
    path = tmp_path / "run.npz"
    assert main(["train", "--epochs", "1", "--no-progress", "--checkpoint", str(path)]) == 0
    arrays = dict(np.load(path))
    meta = json.loads(str(arrays["meta"]))
    del meta["optimizer"]["hyper"]
    np.savez(path, **{**arrays, "meta": np.array(json.dumps(meta))})
    assert main(["train", "--epochs", "2", "--no-progress", "--resume", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "run.npz: not a readable backprop checkpoint (metadata: KeyError('hyper'))" in err
    assert len(err.splitlines()) == 1


def test_a_bug_in_the_engine_keeps_its_traceback(monkeypatch):
    """Only bad input becomes one line: anything else is a bug and must show where it happened."""

    def broken_fit(*args, **kwargs):
        raise TypeError("unsupported operand in the engine")

    monkeypatch.setattr("backprop.fit", broken_fit)
    with pytest.raises(TypeError, match="unsupported operand in the engine"):
        main(["train", "--epochs", "1", "--no-progress"])


@pytest.mark.parametrize(
    "error, builtin",
    [
        ("backprop.backends.BackendError", ValueError),
        ("backprop.data.DataError", RuntimeError),
        ("backprop.data.IDXError", ValueError),
        ("backprop.io.FileFormatError", ValueError),
        ("backprop.nn.StateDictError", KeyError),
        ("backprop.train.DivergedError", FloatingPointError),
        ("backprop.errors.ConfigError", ValueError),
        ("backprop.errors.MissingDependency", ImportError),
    ],
)
def test_every_user_error_is_in_the_family_and_keeps_its_builtin_base(error, builtin):
    import importlib

    from backprop.errors import UserError

    module, name = error.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, UserError) and issubclass(cls, builtin)
    assert str(cls("a message")) == "a message"
