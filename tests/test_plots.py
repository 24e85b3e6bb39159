"""The figures: integer epoch ticks, axis labels, "test" where validation is the test set, the
first layer's weights on one colour scale with a colour bar and a true count of units, and
decision-boundary points that stand out from the background."""

import os

import numpy as np
import pytest

import backprop as bp

pytest.importorskip("matplotlib")

from matplotlib.colors import to_rgba_array  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from backprop.plots import decision_boundary_figure, training_figure  # noqa: E402


def history(epochs: int, validation: bool = True, accuracy: bool = True) -> bp.History:
    records = []
    for epoch in range(1, epochs + 1):
        record = {"epoch": epoch, "loss": 1.0 / epoch, "seconds": 0.1}
        if accuracy:
            record["accuracy"] = 1.0 - 0.5 / epoch
        if validation:
            record.update({f"val_{k}": v * 1.1 for k, v in record.items() if k in ("loss", "accuracy")})
        records.append(record)
    return bp.History(records)


def colorbars(fig) -> list:
    """The colour bars of the figure's images and filled contours."""
    mappables = [m for ax in fig.axes for m in (*ax.images, *ax.collections) if m.colorbar is not None]
    return list({id(m.colorbar): m.colorbar for m in mappables}.values())


def curves(fig) -> list:
    return [ax for ax in fig.axes if ax.get_xlabel() == "epoch"]


def texts(fig) -> list[str]:
    return [text.get_text() for text in fig.findobj(Text)]


@pytest.mark.parametrize("epochs", [1, 3, 7, 45])
def test_epoch_ticks_are_whole_numbers_within_the_epochs(epochs):
    fig = training_figure(history(epochs), bp.nn.mlp([64, 30, 10]))
    for ax in curves(fig):
        low, high = ax.get_xlim()
        ticks = [t for t in ax.xaxis.get_major_locator()() if low <= t <= high]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    if epochs == 1:
        assert ticks == [1]


def test_every_axis_is_labelled_and_the_loss_axis_names_the_loss():
    fig = training_figure(history(4), bp.nn.mlp([64, 30, 10]), loss_label="quadratic loss")
    assert [ax.get_ylabel() for ax in curves(fig)] == ["quadratic loss", "accuracy"]
    assert all(ax.get_xlabel() == "epoch" for ax in curves(fig))


def test_validation_curves_are_named_as_the_caller_says():
    default = training_figure(history(2), bp.nn.mlp([64, 30, 10]))
    test = training_figure(history(2), bp.nn.mlp([64, 30, 10]), validation_label="test")
    for fig, name in ((default, "validation"), (test, "test")):
        for ax in curves(fig):
            assert [t.get_text() for t in ax.get_legend().get_texts()] == ["training", name]


@pytest.mark.parametrize(("units", "title"), [(50, "first 36 of 50 units"), (30, "all 30 units"), (1, "1 unit")])
def test_the_weights_title_counts_the_units_it_shows_and_has(units, title):
    fig = training_figure(history(2), bp.nn.mlp([784, units, 10]))
    assert any(text.endswith(f"first-layer weights, {title}") for text in texts(fig)), texts(fig)
    assert len(fig.findobj(AxesImage)) == min(units, 36)


def test_the_weights_share_one_symmetric_colour_scale_with_one_colour_bar():
    model = bp.nn.mlp([784, 50, 10])
    fig = training_figure(history(2), model)
    limits = {image.get_clim() for image in fig.findobj(AxesImage)}
    (low, high), shown = limits.pop(), bp.to_numpy(model.parameters()[0].data)[:, :36]
    assert not limits and low == -high == -float(np.abs(shown).max())
    assert len(colorbars(fig)) == 1 and colorbars(fig)[0].ax.get_ylabel() == "weight"


def test_an_autoencoder_history_without_validation_or_accuracy_has_one_labelled_loss_axis():
    fig = training_figure(history(3, validation=False, accuracy=False), bp.nn.mlp([784, 30, 784]), loss_label="mse")
    (ax,) = curves(fig)
    assert ax.get_ylabel() == "mse" and [t.get_text() for t in ax.get_legend().get_texts()] == ["training"]
    assert len(fig.findobj(AxesImage)) == 30


def test_inputs_that_are_not_a_square_image_get_no_weights_panel():
    fig = training_figure(history(1), bp.nn.mlp([2, 8, 2]))
    assert len(curves(fig)) == 2 and not fig.findobj(AxesImage) and not colorbars(fig)
    assert not any("weights" in text for text in texts(fig))


@pytest.mark.parametrize("outputs", [1, 2])
def test_decision_boundary_points_stand_out_and_are_named(outputs):
    bp.manual_seed(0)
    x, y = bp.data.spirals(40)
    model = bp.nn.mlp([2, 8, outputs], "tanh", "sigmoid" if outputs == 1 else None)
    fig = decision_boundary_figure(model, x, y, resolution=30)
    ax = fig.axes[0]
    background = ax.collections[0].get_cmap()(np.linspace(0, 1, 256))[:, :3]
    points = [c for c in ax.collections if c.get_label().startswith("class")]
    assert [c.get_label() for c in points] == ["class 0", "class 1"]
    for collection in points:
        face = to_rgba_array(collection.get_facecolor())[:, :3]
        nearest = np.min(np.linalg.norm(face[:, None, :] - background[None, :, :], axis=-1))
        assert nearest > 0.3, f"{collection.get_label()} looks like the background"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["class 0", "class 1"]
    (bar,) = colorbars(fig)
    assert "output" in bar.ax.get_ylabel() and ax.get_xlabel() and ax.get_ylabel()


def test_the_train_command_labels_its_validation_curves_test(tmp_path, monkeypatch):
    from backprop import plots
    from backprop.cli import main

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    assert main(["train", "--epochs", "1", "--no-progress", "--plot", str(tmp_path / "c.png")]) == 0
    (fig,) = figures
    for ax in curves(fig):
        assert "test" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert curves(fig)[0].get_ylabel() == "cross-entropy loss"


@pytest.mark.skipif(
    not os.path.isdir(os.path.join(os.environ.get("BACKPROP_DATA_DIR", ""), "mnist")),
    reason="real MNIST not found in $BACKPROP_DATA_DIR",
)
def test_the_784_50_10_example_labels_its_validation_curves_test(monkeypatch):
    from test_examples import example

    from backprop import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    example("mnist_784_50_10").main(epochs=1, limit=500, plot="unused.png")
    (fig,) = figures
    assert all("test" in [t.get_text() for t in ax.get_legend().get_texts()] for ax in curves(fig))
    assert any(text.endswith("first 36 of 50 units") for text in texts(fig))
