"""Nielsen's network.py, chapter 1: 784-30-10 sigmoid, quadratic cost, SGD lr 3.0, batch 10,
standard-normal initialization. Nielsen reports about 95% test accuracy.

    BACKPROP_DATA_DIR=../shared/data python examples/nielsen_mnist.py
"""

import sys

from _common import StopAt, mnist_one_hot, report

import backprop as bp


def main(epochs: int = 10, limit: int | None = None, stop_at: float | None = None, seed: int = 0) -> dict:
    bp.manual_seed(seed)
    train, test = mnist_one_hot(limit=limit)
    model = bp.nn.mlp([784, 30, 10], "sigmoid", output_activation="sigmoid", init="standard_normal", dtype="float64")
    optimizer = bp.optim.SGD(model.parameters(), lr=3.0)
    callbacks = [StopAt(stop_at)] if stop_at else []
    history = bp.fit(model, bp.losses.quadratic_loss, optimizer, train, epochs, batch_size=10, validation=test,
                     callbacks=callbacks, progress=sys.stdout.isatty())  # fmt: skip
    return report("Nielsen 784-30-10", history)


if __name__ == "__main__":
    main()
