"""Training plots with matplotlib (the `plot` extra): curves per epoch, first-layer weights,
and a decision boundary for 2-D inputs. Files are written atomically."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np

from backprop.backend import to_numpy
from backprop.errors import ConfigError, MissingDependency
from backprop.files import atomic_write


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise MissingDependency("plots need matplotlib: pip install 'backprop[plot]'") from error
    return plt


def check_plot_path(path) -> str:
    """The image format of `path` (from its suffix; png without one); raises now, before any work,
    if matplotlib is missing or cannot write that format."""
    _pyplot()
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = Path(path).suffix.lstrip(".").lower() or "png"
    formats = FigureCanvasBase.get_supported_filetypes()
    if suffix not in formats:
        raise ConfigError(f"{path}: cannot write a .{suffix} plot; use one of .{', .'.join(sorted(formats))}")
    return suffix


def _save(fig, path) -> None:
    suffix = check_plot_path(path)
    atomic_write(path, lambda f: fig.savefig(f, format=suffix, dpi=110, bbox_inches="tight"))


def _figure(**kwargs):
    """A Figure of its own (no pyplot state: nothing to close, safe beside other threads)."""
    _pyplot()
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kwargs)


def training_figure(history, model, title: str = "", validation_label: str = "validation", loss_label: str = "loss"):
    """Loss (and accuracy, where the history has it) per epoch, for training and validation, and
    the first layer's weights as images when that layer's input is a square image; a Figure.

    `validation_label` names the validation curves ("test" where the validation set is the test
    set) and `loss_label` the loss axis.

    >>> import backprop as bp
    >>> history = bp.History([{"epoch": 1, "loss": 0.9, "val_loss": 1.0}, {"epoch": 2, "loss": 0.5, "val_loss": 0.7}])
    >>> fig = training_figure(history, bp.nn.mlp([4, 3, 2]), validation_label="test", loss_label="quadratic loss")
    >>> fig.axes[0].get_ylabel(), fig.axes[0].get_legend_handles_labels()[1]
    ('quadratic loss', ['training', 'test'])
    """
    from matplotlib.ticker import MaxNLocator

    records = list(getattr(history, "epochs", history))
    weights = to_numpy(model.parameters()[0].data)  # (in_features, units)
    side = math.isqrt(weights.shape[0])
    show_weights = weights.ndim == 2 and side > 1 and side * side == weights.shape[0]
    metrics = [("loss", loss_label)]
    if any("accuracy" in r or "val_accuracy" in r for r in records):
        metrics.append(("accuracy", "accuracy"))
    fig = _figure(figsize=(4.2 * len(metrics) + (4.6 if show_weights else 0.0), 4.3))
    curves, panel = fig.subfigures(1, 2, width_ratios=[4.2 * len(metrics), 4.6]) if show_weights else (fig, None)
    for ax, (metric, label) in zip(curves.subplots(1, len(metrics), squeeze=False)[0], metrics, strict=True):
        for prefix, name, style in (("", "training", "-o"), ("val_", validation_label, "--s")):
            kept = [r for r in records if prefix + metric in r]  # fit records val_ only with a validation set
            if kept:
                epochs, values = [r["epoch"] for r in kept], [r[prefix + metric] for r in kept]
                ax.plot(epochs, values, style if len(kept) <= 30 else style[:-1], label=name)  # markers unless crowded
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10], min_n_ticks=1))
        if len({r["epoch"] for r in records}) == 1:  # one point: its epoch alone on the axis
            ax.set_xlim(records[0]["epoch"] - 0.5, records[0]["epoch"] + 0.5)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend()
    if show_weights:
        _weights_panel(panel, weights, side)
    if title:
        fig.suptitle(title)
    return fig


def plot_training(
    history, model, path, title: str = "", validation_label: str = "validation", loss_label: str = "loss"
) -> None:
    """`training_figure(...)` written to `path` (its format from the suffix), atomically.

    >>> import pathlib, tempfile, backprop as bp
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     plot_training(bp.History([{"epoch": 1, "loss": 0.9}]), bp.nn.mlp([3, 2]), pathlib.Path(folder, "a.png"))
    ...     [path.name for path in pathlib.Path(folder).iterdir()]
    ['a.png']
    """
    _save(training_figure(history, model, title, validation_label, loss_label), path)


def _weights_panel(panel, weights, side: int, most: int = 36) -> None:
    """The first `most` units' incoming weights as side x side images on one symmetric colour
    scale, with one colour bar."""
    total = weights.shape[1]
    units = min(total, most)
    shown = weights[:, :units]
    limit = float(np.abs(shown).max()) or 1.0
    cols = math.ceil(math.sqrt(units))
    rows = math.ceil(units / cols)
    axes = panel.subplots(rows, cols, squeeze=False, gridspec_kw={"wspace": 0.05, "hspace": 0.05})
    for unit, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if unit < units:
            image = ax.imshow(shown[:, unit].reshape(side, side), cmap="RdBu_r", vmin=-limit, vmax=limit)
        else:
            ax.set_axis_off()
    panel.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="weight")
    which = f"first {units} of {total} units" if units < total else ("1 unit" if total == 1 else f"all {total} units")
    panel.suptitle(f"first-layer weights, {which}", fontsize="medium")


# one style per class: shapes and colours that are not in the background's RdBu (neither red, blue
# nor white), with edges that stand out on its dark ends and on its white middle
_CLASS_STYLES = (
    {"marker": "o", "facecolors": "gold", "edgecolors": "black"},
    {"marker": "s", "facecolors": "black", "edgecolors": "white"},
    {"marker": "^", "facecolors": "limegreen", "edgecolors": "black"},
    {"marker": "D", "facecolors": "magenta", "edgecolors": "black"},
)


def decision_boundary_figure(model, points, labels, resolution: int = 200, title: str = "decision boundary"):
    """The model's output over the plane, centred on its decision threshold (1/2 for one output,
    output 1 - output 0 = 0 for two), with the boundary drawn and the points on top; a Figure.

    >>> import backprop as bp
    >>> fig = decision_boundary_figure(bp.nn.mlp([2, 8, 1], "tanh", "sigmoid"), *bp.data.spirals(50), resolution=40)
    >>> fig.axes[0].get_legend_handles_labels()[1]
    ['class 0', 'class 1']
    """
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator

    from backprop.train import predict

    fig = _figure(figsize=(6.4, 5.6))
    points, labels = np.asarray(points), np.asarray(labels)
    low, high = points.min(axis=0) - 0.1, points.max(axis=0) + 0.1
    gx, gy = np.meshgrid(np.linspace(low[0], high[0], resolution), np.linspace(low[1], high[1], resolution))
    out = to_numpy(predict(model, np.stack([gx.ravel(), gy.ravel()], axis=1)))  # cast to the model's dtype
    if out.shape[1] == 1:  # as accuracy counts it: class 1 above 1/2
        score, centre, name = out[:, 0], 0.5, "model output (class 1 above 0.5)"
    else:
        score, centre, name = out[:, 1] - out[:, 0], 0.0, "output 1 - output 0 (class 1 above 0)"
    score = score.reshape(gx.shape)
    half = float(np.abs(score - centre).max()) or 1.0
    levels = np.linspace(centre - half, centre + half, 21)
    ax = fig.add_subplot()
    filled = ax.contourf(gx, gy, score, levels=levels, cmap="RdBu_r", norm=Normalize(levels[0], levels[-1]), alpha=0.8)
    fig.colorbar(
        filled, cax=ax.inset_axes([1.04, 0.0, 0.05, 1.0]), label=name, ticks=MaxNLocator(6, steps=[1, 2, 5, 10])
    )
    if score.min() < centre < score.max():
        ax.contour(gx, gy, score, levels=[centre], colors="black", linewidths=1.0)
    classes = np.unique(labels)
    for style, label in zip(itertools.cycle(_CLASS_STYLES), classes):
        inside = labels == label
        ax.scatter(points[inside, 0], points[inside, 1], s=16, linewidths=0.8, label=f"class {label}", **style)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=min(len(classes), 4), markerscale=1.5)
    ax.set_aspect("equal")
    ax.set_xlabel("input 0")
    ax.set_ylabel("input 1")
    ax.set_title(title)
    return fig


def plot_decision_boundary(
    model, points, labels, path, resolution: int = 200, title: str = "decision boundary"
) -> None:
    """`decision_boundary_figure(...)` written to `path` (its format from the suffix), atomically.

    >>> import pathlib, tempfile, backprop as bp
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     plot_decision_boundary(bp.nn.mlp([2, 2]), *bp.data.spirals(20), pathlib.Path(folder, "b.png"), 40)
    ...     [path.name for path in pathlib.Path(folder).iterdir()]
    ['b.png']
    """
    _save(decision_boundary_figure(model, points, labels, resolution, title), path)
