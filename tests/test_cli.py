"""The command line: training on the bundled data, saving, plots, info, and one-line errors."""

import subprocess
import sys

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
    ],
)
def test_errors_are_one_line_without_traceback(args, message, tmp_path):
    env = {"PATH": "", "XDG_CACHE_HOME": str(tmp_path), "HOME": str(tmp_path), "no_proxy": "*",
           "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "backprop.cli", *args], capture_output=True, text=True, env=env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, result.stderr
