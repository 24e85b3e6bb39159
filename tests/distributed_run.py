"""Run under `mpiexec -n W python tests/distributed_run.py OUT BACKEND OPTIMIZER CAPTURE [FAIL_AT]`:
a data-parallel fit whose rank 0 writes its weights and history to OUT (an .npz). Each rank seeds
differently: fit must start them all as rank 0. With FAIL_AT, rank 1 raises at that step."""

import os
import sys

import numpy as np

import backprop as bp

PER_RANK_BATCH, EPOCHS = 4, 5


def data(n=96, seed=7):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    return x, (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype("int64") + (x[:, 3] > 1).astype("int64")


def validation():
    """37 samples: shards of 19 and 18 (2 ranks), 13, 12 and 12 (3), so the mean must weigh them."""
    return data(37, seed=8)


class FailOnRankOne:
    """A gradient hook that raises on rank 1 at step `at` (a fault in one process)."""

    hyperparameters = ()

    def __init__(self, at):
        self.at, self.calls = at, 0

    def __call__(self, grads):
        self.calls += 1
        if bp.distributed.world().rank == 1 and self.calls == self.at:
            raise RuntimeError(f"rank 1 fails at step {self.at}")
        return grads


def main(out, backend, optimizer, capture, fail_at=None):
    world = bp.distributed.world()
    with bp.use_backend(backend):
        bp.manual_seed(world.rank)  # different on every rank
        hidden = int(os.environ.get("RUN_HIDDEN_RANK_1", 8)) if world.rank == 1 else 8  # a rank built otherwise
        model = bp.nn.mlp([4, hidden, 3], "tanh", dtype="float64")
        if optimizer == "sgd":
            opt = bp.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        else:
            opt = bp.optim.Adam(model.parameters(), lr=0.01)
        hooks = [FailOnRankOne(fail_at)] if fail_at else []
        epochs = int(os.environ.get("RUN_EPOCHS", EPOCHS))  # RUN_CHECKPOINT, RUN_RESUME: paths for fit
        files = {"checkpoint": os.environ.get("RUN_CHECKPOINT"), "resume": os.environ.get("RUN_RESUME")}
        history = bp.fit(model, bp.losses.cross_entropy, opt, data(), epochs, PER_RANK_BATCH, verbose=0,
                         capture=capture, gradient_hooks=hooks, validation=validation(), **files)  # fmt: skip
        if world.is_main:
            weights = {name: bp.to_numpy(a) for name, a in model.state_dict().items()}
            records = {k: np.array(history[k]) for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
            np.savez(out, **records, **weights)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1", int(sys.argv[5]) if len(sys.argv) > 5 else None)
