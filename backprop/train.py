"""Training: `fit`, `evaluate`, `predict`, a per-epoch history and early stopping.

Losses and accuracy are summed on the device and read once per epoch (no device-to-host sync
per step); batches come from `backprop.data.Batches` on the current backend.

>>> import backprop as bp
>>> bp.manual_seed(0)
>>> x, y = bp.data.spirals(50)
>>> model = bp.nn.mlp([2, 8, 2], "tanh")
>>> history = bp.fit(model, bp.losses.cross_entropy, bp.optim.Adam(model.parameters(), 0.05),
...                  (x, y), epochs=3, batch_size=20, progress=False)
>>> sorted(history.epochs[-1])
['accuracy', 'epoch', 'loss', 'seconds']
"""

from __future__ import annotations

import math
import time

import numpy as np

from backprop.backend import to_numpy
from backprop.data.batches import Batches
from backprop.errors import UserError
from backprop.io import load_checkpoint, save_checkpoint
from backprop.progress import progress_bar
from backprop.step import TrainStep
from backprop.tensor import Tensor, no_grad


class History:
    """One dict per epoch: epoch, loss, metrics, val_ versions of both, seconds."""

    def __init__(self, epochs=None):
        self.epochs: list[dict] = list(epochs or [])

    def __getitem__(self, key: str) -> list:
        return [record[key] for record in self.epochs if key in record]

    def __len__(self) -> int:
        return len(self.epochs)

    def __repr__(self) -> str:
        return f"History({self.epochs[-1] if self.epochs else 'empty'}, epochs={len(self.epochs)})"


class EarlyStopping:
    """Stop when `monitor` has not improved by `min_delta` for `patience` epochs; optionally put
    back the best weights."""

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0, restore_best=True):
        self.monitor, self.patience, self.min_delta, self.restore_best = monitor, patience, min_delta, restore_best
        self.sign = -1.0 if "loss" in monitor else 1.0  # losses improve downwards
        self.best, self.best_state, self.waited = -math.inf, None, 0

    def on_epoch_end(self, model, record: dict) -> bool:
        if self.monitor not in record:
            raise KeyError(f"EarlyStopping monitors {self.monitor!r}, but the epoch reported {sorted(record)}")
        score = self.sign * record[self.monitor]
        if score > self.best + self.min_delta:
            self.best, self.waited = score, 0
            if self.restore_best:
                self.best_state = {k: to_numpy(v).copy() for k, v in model.state_dict().items()}
            return False
        self.waited += 1
        if self.waited >= self.patience:
            if self.best_state is not None:
                model.load_state_dict(self.best_state)
            return True
        return False


def _correct(xp, out, target):
    """How many predictions are right, as a device scalar: argmax for several outputs, p > 1/2 for one."""
    if out.shape[-1] == 1:
        predicted = out[:, 0] > 0.5
        flat = target[:, 0] if target.ndim == 2 else target
        truth = flat > 0.5 if xp.isdtype(flat.dtype, "real floating") else flat == 1
    else:
        predicted = xp.argmax(out, axis=-1)
        truth = target if target.ndim == 1 else xp.argmax(target, axis=-1)
    return xp.sum(xp.astype(predicted == truth, xp.int64))


def _as_batches(data, batch_size: int, shuffle: bool) -> Batches:
    if isinstance(data, Batches):
        return data
    inputs, targets = data
    return Batches(inputs, targets, batch_size, shuffle=shuffle)


class DivergedError(UserError, FloatingPointError):
    """The training loss became inf or NaN."""


def _check_finite(value: float, epoch: int, what: str) -> None:
    if not math.isfinite(value):
        raise DivergedError(f"{what} became {value} in epoch {epoch}: training diverged (try a lower learning rate)")


class _Tally:
    """Loss and correct predictions summed on the device, read once at the end."""

    def __init__(self, xp, metrics):
        self.xp, self.accuracy = xp, "accuracy" in metrics
        self.loss, self.correct, self.count = 0.0, 0, 0

    def add(self, loss, out, targets) -> None:
        n = out.shape[0]
        self.loss, self.count = self.loss + loss * n, self.count + n
        if self.accuracy:
            self.correct = self.correct + _correct(self.xp, out, targets)

    def record(self) -> dict:
        result = {"loss": float(to_numpy(self.loss)) / self.count}  # the one read from the device
        if self.accuracy:
            result["accuracy"] = float(to_numpy(self.correct)) / self.count
        return result


def _run_epoch(step: TrainStep, batches: Batches, metrics, bar) -> dict:
    tally = _Tally(batches.xp, metrics)
    for inputs, targets in batches:
        loss, out = step(inputs, targets)
        tally.add(loss, out, targets)
        bar.update(1)
    return tally.record()


@no_grad()
def evaluate(model, loss_fn, data, batch_size: int = 1000, metrics=("accuracy",)) -> dict:
    """Mean loss (and accuracy) over `data` = (inputs, targets) or Batches, in eval mode."""
    batches = _as_batches(data, batch_size, shuffle=False)
    tally = _Tally(batches.xp, metrics)
    was_training = model.training
    model.eval()
    try:
        for inputs, targets in batches:
            out = model(Tensor(inputs))
            tally.add(loss_fn(out, targets).data, out.data, targets)
    finally:
        model.train(was_training)
    return tally.record()


@no_grad()
def predict(model, inputs, batch_size: int = 1000):
    """The model's outputs for `inputs` (host or backend array), as one backend array."""
    batches = Batches(to_numpy(inputs), np.zeros(len(inputs)), batch_size, shuffle=False)
    was_training = model.training
    model.eval()
    try:
        outs = [model(Tensor(x)).data for x, _ in batches]
    finally:
        model.train(was_training)
    return batches.xp.concat(outs, axis=0)


def fit(
    model,
    loss,
    optimizer,
    train,
    epochs: int,
    batch_size: int = 32,
    validation=None,
    metrics=("accuracy",),
    callbacks=(),
    progress: bool = True,
    shuffle: bool = True,
    checkpoint=None,
    resume=None,
    capture: bool = False,
    gradient_hooks=(),
) -> History:
    """Train `model` on `train` = (inputs, targets) host arrays (or Batches) for `epochs` epochs.

    `loss(outputs, targets)` gives a scalar tensor; `validation` is evaluated after each epoch.
    `callbacks` have `on_epoch_end(model, record) -> bool` (True stops training).
    `checkpoint` (a .npz path) is written after every epoch; `resume` (a checkpoint path) continues
    that run: model, optimizer, random state and history, so the result equals an uninterrupted run.
    `capture=True` captures the training step and replays it (backprop.step.TrainStep): the same
    numbers, less Python per step; a step that cannot be captured warns and runs eagerly.
    `gradient_hooks` run on the gradients between backward and the update (`bp.optim.ClipGradNorm`).
    """
    batches = _as_batches(train, batch_size, shuffle)
    validation = _as_batches(validation, max(batch_size, 1000), False) if validation is not None else None
    history, start = History(), 1
    if resume is not None:
        meta = load_checkpoint(resume, model, optimizer)
        history, start = History(meta["history"]), meta["epoch"] + 1
    model.train()
    step = TrainStep(model, loss, optimizer, capture=capture, gradient_hooks=gradient_hooks)
    for epoch in range(start, epochs + 1):
        began = time.perf_counter()
        with progress_bar(len(batches), f"epoch {epoch}/{epochs}", "batch", enabled=progress) as bar:
            record = {"epoch": epoch, **_run_epoch(step, batches, metrics, bar)}
            _check_finite(record["loss"], epoch, "the training loss")
            if validation is not None:
                record.update({f"val_{k}": v for k, v in evaluate(model, loss, validation, metrics=metrics).items()})
            record["seconds"] = time.perf_counter() - began
            bar.set_postfix({k: round(v, 4) for k, v in record.items() if k not in ("epoch", "seconds")})
        history.epochs.append(record)
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, optimizer, epoch, history)
        stops = [callback.on_epoch_end(model, record) for callback in callbacks]
        if any(stops):
            break
    return history
