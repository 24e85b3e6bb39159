"""Training plots with matplotlib (the `plot` extra): curves per epoch, first-layer weights,
and a decision boundary for 2-D inputs. Files are written atomically."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from backprop.backend import dtype_name, get_backend, to_numpy
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


def plot_training(history, model, path, title: str = "") -> None:
    """Loss and accuracy per epoch (training and validation) and the first layer's weights as images."""
    plt = _pyplot()
    weights = to_numpy(model.parameters()[0].data)  # (in_features, units)
    side = math.isqrt(weights.shape[0])
    show_weights = side * side == weights.shape[0]
    fig = plt.figure(figsize=(12, 4.5))
    grid = fig.add_gridspec(1, 3 if show_weights else 2)
    for column, metric in enumerate(("loss", "accuracy")):
        ax = fig.add_subplot(grid[0, column])
        for prefix, style in (("", "-o"), ("val_", "--s")):
            values = history[prefix + metric]
            if values:
                ax.plot(history["epoch"][: len(values)], values, style, label=(prefix or "train_") + metric)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    if show_weights:
        _weights_panel(fig, grid[0, 2], weights, side)
    fig.suptitle(title)
    _save(fig, path)
    plt.close(fig)


def _weights_panel(fig, cell, weights, side: int, most: int = 36) -> None:
    units = min(weights.shape[1], most)
    cols = math.ceil(math.sqrt(units))
    rows = math.ceil(units / cols)
    inner = cell.subgridspec(rows, cols, wspace=0.05, hspace=0.05)
    for unit in range(units):
        ax = fig.add_subplot(inner[unit // cols, unit % cols])
        image = weights[:, unit].reshape(side, side)
        limit = float(np.abs(image).max()) or 1.0
        ax.imshow(image, cmap="RdBu", vmin=-limit, vmax=limit)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.text(0.83, 0.93, f"first-layer weights ({units} units)", ha="center")


def plot_decision_boundary(model, points, labels, path, resolution: int = 200) -> None:
    """The model's output over the plane with the points on top (2-D inputs, one or two outputs)."""
    plt = _pyplot()
    from backprop.train import predict

    points, labels = np.asarray(points), np.asarray(labels)
    low, high = points.min(axis=0) - 0.1, points.max(axis=0) + 0.1
    gx, gy = np.meshgrid(np.linspace(low[0], high[0], resolution), np.linspace(low[1], high[1], resolution))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(dtype_name(model.parameters()[0].dtype))
    out = to_numpy(predict(model, get_backend().asarray(grid)))
    score = out[:, 0] if out.shape[1] == 1 else out[:, 1] - out[:, 0]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.contourf(gx, gy, score.reshape(gx.shape), levels=30, cmap="RdBu", alpha=0.7)
    ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="RdBu", edgecolors="k", s=12)
    ax.set_title("decision boundary")
    _save(fig, path)
    plt.close(fig)
