"""Shared by the examples: Nielsen's training setting, MNIST as one-hot float64, a result line."""

import numpy as np

import backprop as bp


def mnist_one_hot(dataset: str = "mnist", dtype: str = "float64", limit: int | None = None):
    """((x, one-hot y) train, (x, one-hot y) test), optionally only the first `limit` samples of each."""
    loader = bp.data.DATASETS[dataset]
    (x, y), (xt, yt) = loader("train"), loader("test")
    eye = np.eye(10, dtype=dtype)
    return (x[:limit].astype(dtype), eye[y[:limit]]), (xt[:limit].astype(dtype), eye[yt[:limit]])


def report(name: str, history) -> dict:
    last = history.epochs[-1]
    seconds = sum(history["seconds"])
    best = max(history["val_accuracy"])
    accuracy, epochs = last["val_accuracy"], last["epoch"]
    print(f"{name}: test accuracy {accuracy:.4f} (best {best:.4f}) after {epochs} epochs, {seconds:.1f} s")
    return {
        "test_accuracy": last["val_accuracy"],
        "best_test_accuracy": best,
        "epochs": last["epoch"],
        "seconds": seconds,
    }


class StopAt:
    """A callback that stops training once validation accuracy reaches `target`."""

    def __init__(self, target: float):
        self.target = target

    def on_epoch_end(self, model, record) -> bool:
        return record["val_accuracy"] >= self.target


def fit_sigmoid_quadratic(sizes, batch_size: int, init: str, epochs: int, limit=None, stop_at=None, seed: int = 0):
    """Nielsen's setting: sigmoid layers, quadratic cost, SGD with lr 3.0, float64, one-hot targets."""
    bp.manual_seed(seed)
    train, test = mnist_one_hot(limit=limit)
    model = bp.nn.mlp(sizes, "sigmoid", output_activation="sigmoid", init=init, dtype="float64")
    optimizer = bp.optim.SGD(model.parameters(), lr=3.0)
    callbacks = [StopAt(stop_at)] if stop_at else []
    history = bp.fit(model, bp.losses.quadratic_loss, optimizer, train, epochs, batch_size, validation=test,
                     callbacks=callbacks)  # fmt: skip
    return model, history
