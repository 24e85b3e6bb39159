"""Two spirals with a tanh 2-8-8-1 network and binary cross-entropy; plots the decision boundary.

python examples/spirals.py --plot spirals.png
"""

import argparse

import backprop as bp


def main(epochs: int = 300, plot=None, seed: int = 0) -> dict:
    bp.manual_seed(seed)
    x, y = bp.data.spirals(200, turns=1.5)
    x, target = x.astype("float64"), y[:, None].astype("float64")
    model = bp.nn.mlp([2, 8, 8, 1], "tanh", output_activation="sigmoid", dtype="float64")
    optimizer = bp.optim.Adam(model.parameters(), lr=0.03)
    history = bp.fit(model, bp.losses.binary_cross_entropy, optimizer, (x, target), epochs, 20, verbose=0)
    if plot:
        bp.plots.plot_decision_boundary(model, x, y, plot)
    last = history.epochs[-1]
    print(f"spirals 2-8-8-1: training accuracy {last['accuracy']:.4f} after {last['epoch']} epochs, "
          f"{sum(history['seconds']):.1f} s")  # fmt: skip
    return {"train_accuracy": last["accuracy"], "epochs": last["epoch"]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--plot", default="spirals.png")
    main(plot=parser.parse_args().plot)
