"""784-50-10 sigmoid, quadratic cost, SGD lr 3.0, batch 8; plots loss, accuracy and the
first layer's weights per epoch.

Glorot-normal initialization: with Nielsen's standard-normal weights, 50 sigmoid units saturate
at this learning rate (85.6% after 10 epochs, seed 0); scaled weights reach 95% in the first epoch.

    BACKPROP_DATA_DIR=../shared/data python examples/mnist_784_50_10.py --plot mnist50.png
"""

import argparse

from _common import fit_sigmoid_quadratic, report

import backprop as bp


def main(epochs: int = 10, limit: int | None = None, stop_at: float | None = None, plot=None, seed: int = 0) -> dict:
    model, history = fit_sigmoid_quadratic([784, 50, 10], 8, "glorot_normal", epochs, limit, stop_at, seed)
    if plot:
        title = "MNIST 784-50-10, sigmoid, batch 8, lr 3.0"
        bp.plots.plot_training(history, model, plot, title, validation_label="test", loss_label="quadratic loss")
    return report("784-50-10", history)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--plot", default="mnist-784-50-10.png")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    main(args.epochs, plot=args.plot)
