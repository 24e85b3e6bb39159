"""Every example runs (short variants everywhere); the accuracy thresholds are checked in full
where BACKPROP_FULL_EXAMPLES=1 and real MNIST is in $BACKPROP_DATA_DIR (one nox session does this)."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HAVE_MNIST = (
    bool(os.environ.get("BACKPROP_DATA_DIR")) and Path(os.environ.get("BACKPROP_DATA_DIR", ""), "mnist").is_dir()
)
needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason="real MNIST not found in $BACKPROP_DATA_DIR")
full = pytest.mark.skipif(
    os.environ.get("BACKPROP_FULL_EXAMPLES") != "1" or not HAVE_MNIST,
    reason="full example runs need BACKPROP_FULL_EXAMPLES=1 and real MNIST",
)


def example(name: str):
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(EXAMPLES))


def test_handwritten_backward_matches_engine_and_torch():
    figures = example("handwritten_backward").main()
    assert figures["loss_difference"] < 1e-12 and figures["engine_max_difference"] < 1e-12
    if "torch_max_difference" in figures:
        assert figures["torch_max_difference"] < 1e-12


def test_sparse_autoencoder_vectorized_gradient_equals_the_loop():
    assert example("sparse_autoencoder").main(m=10_000)["max_difference"] < 1e-10


def test_spirals_reach_95_percent_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    figures = example("spirals").main(plot=tmp_path / "boundary.png")
    assert figures["train_accuracy"] >= 0.95 and (tmp_path / "boundary.png").stat().st_size > 1000


@needs_mnist
@pytest.mark.parametrize("name", ["nielsen_mnist", "mnist_784_50_10"])
def test_mnist_examples_run_short(name):
    figures = example(name).main(epochs=1, limit=2000)
    assert figures["epochs"] == 1 and figures["test_accuracy"] > 0.3  # chance is 0.1


@needs_mnist
@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_modern_mlp_runs_short(dataset):
    assert example("modern_mlp").main(dataset, epochs=1, limit=3000)["test_accuracy"] > 0.6


@full
def test_nielsen_reaches_94_5_percent_within_10_epochs():
    figures = example("nielsen_mnist").main(epochs=10, stop_at=0.945, seed=1)
    assert figures["best_test_accuracy"] >= 0.945


@full
def test_784_50_10_reaches_95_percent_with_a_plot(tmp_path):
    pytest.importorskip("matplotlib")
    figures = example("mnist_784_50_10").main(epochs=10, stop_at=0.95, plot=tmp_path / "curves.png")
    assert figures["best_test_accuracy"] >= 0.95 and (tmp_path / "curves.png").stat().st_size > 1000


@full
def test_modern_mlp_reaches_98_percent_and_fashion_is_reported():
    assert example("modern_mlp").main("mnist", epochs=10)["test_accuracy"] >= 0.98
    assert example("modern_mlp").main("fashion-mnist", epochs=10)["test_accuracy"] > 0.85
