"""Nielsen's network.py, chapter 1: 784-30-10 sigmoid, quadratic cost, SGD lr 3.0, batch 10,
standard-normal initialization. Nielsen reports about 95% test accuracy.

    BACKPROP_DATA_DIR=../shared/data python examples/nielsen_mnist.py
"""

from _common import fit_sigmoid_quadratic, report


def main(epochs: int = 10, limit: int | None = None, stop_at: float | None = None, seed: int = 0) -> dict:
    _, history = fit_sigmoid_quadratic([784, 30, 10], 10, "standard_normal", epochs, limit, stop_at, seed)
    return report("Nielsen 784-30-10", history)


if __name__ == "__main__":
    main()
