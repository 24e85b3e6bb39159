"""784-50-10 sigmoid, quadratic cost, SGD lr 3.0, batch 8; plots loss, accuracy and the
first layer's weights per epoch.

Glorot-normal initialization: with Nielsen's standard-normal weights, 50 sigmoid units saturate
at this learning rate (85.6% after 10 epochs, seed 0); scaled weights reach 95% in the first epoch.

    BACKPROP_DATA_DIR=../shared/data python examples/mnist_784_50_10.py --plot mnist50.png
"""

import argparse
import sys

from _common import StopAt, mnist_one_hot, report

import backprop as bp


def main(epochs: int = 10, limit: int | None = None, stop_at: float | None = None, plot=None, seed: int = 0) -> dict:
    bp.manual_seed(seed)
    train, test = mnist_one_hot(limit=limit)
    model = bp.nn.mlp([784, 50, 10], "sigmoid", output_activation="sigmoid", init="glorot_normal", dtype="float64")
    optimizer = bp.optim.SGD(model.parameters(), lr=3.0)
    callbacks = [StopAt(stop_at)] if stop_at else []
    history = bp.fit(model, bp.losses.quadratic_loss, optimizer, train, epochs, batch_size=8, validation=test,
                     callbacks=callbacks, progress=sys.stdout.isatty())  # fmt: skip
    if plot:
        bp.plots.plot_training(history, model, plot, title="MNIST 784-50-10, sigmoid, batch 8, lr 3.0")
    return report("784-50-10", history)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--plot", default="mnist-784-50-10.png")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    main(args.epochs, plot=args.plot)
