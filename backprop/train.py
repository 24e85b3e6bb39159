"""Training: `fit`, `evaluate`, `predict`, a per-epoch history and early stopping.

Losses and accuracy are summed on the device and read once per epoch (no device-to-host sync
per step); batches come from `backprop.data.Batches` on the current backend.

>>> import backprop as bp
>>> bp.manual_seed(0)
>>> x, y = bp.data.spirals(50)
>>> model = bp.nn.mlp([2, 8, 2], "tanh")
>>> history = bp.fit(model, bp.losses.cross_entropy, bp.optim.Adam(model.parameters(), 0.05),
...                  (x, y), epochs=3, batch_size=20, verbose=0)
>>> sorted(history.epochs[-1])
['accuracy', 'epoch', 'loss', 'seconds']
"""

from __future__ import annotations

import math
import numbers
import time

import numpy as np
from array_api_compat import device as device_of
from array_api_compat import is_array_api_obj

from backprop import distributed
from backprop.backend import copy_array, dtype_name, get_backend, namespace_of, to_numpy
from backprop.backends import backend_of
from backprop.data.batches import Batches
from backprop.errors import ConfigError, UserError, count, positive_int
from backprop.io import check_checkpoint_path, checkpoint_metadata, load_checkpoint, save_checkpoint
from backprop.nn import evaluating
from backprop.progress import EpochReport, resolve_verbose
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
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` epochs;
    optionally put back the best weights. Its state is saved in checkpoints, so a resumed run
    stops where the uninterrupted one would.

    >>> stop = EarlyStopping("loss", patience=2)
    >>> [stop.on_epoch_end(None, {"loss": value}) for value in (1.0, 0.5, 0.6, 0.5)]
    [False, False, False, True]
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0, restore_best=True):
        if not isinstance(monitor, str):
            raise ConfigError(f"EarlyStopping monitors a record name such as 'val_loss', not {monitor!r}")
        if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) or patience < 0:
            raise ConfigError(f"patience must be a whole number of epochs >= 0, got {patience!r}")
        if isinstance(min_delta, bool) or not isinstance(min_delta, numbers.Real) or not 0 <= min_delta < math.inf:
            raise ConfigError(f"min_delta must be a finite number >= 0, got {min_delta!r}")
        self.monitor, self.patience, self.min_delta, self.restore_best = monitor, patience, min_delta, restore_best
        self.sign = -1.0 if "loss" in monitor else 1.0  # losses improve downwards
        self.best, self.best_state, self.waited, self.stopped = -math.inf, None, 0, False

    def on_epoch_end(self, model, record: dict) -> bool:
        if self.monitor not in record:
            raise KeyError(f"EarlyStopping monitors {self.monitor!r}, but the epoch reported {sorted(record)}")
        score = self.sign * record[self.monitor]
        if score > self.best + self.min_delta:
            self.best, self.waited, self.stopped = score, 0, False  # an object used again goes on
            if self.restore_best and model is not None:
                self.best_state = {k: to_numpy(v).copy() for k, v in model.state_dict().items()}
            return False
        self.waited += 1
        if self.waited >= self.patience:
            if self.best_state is not None:
                model.load_state_dict(self.best_state)
            self.stopped = True
        return self.stopped

    def state_dict(self) -> dict:
        """What a checkpoint keeps: the best score, the epochs waited, whether it stopped, and the
        best weights (as "best/<parameter name>" arrays)."""
        best = {f"best/{name}": array for name, array in (self.best_state or {}).items()}
        return {"best": self.best, "waited": self.waited, "stopped": self.stopped, **best}

    def check_state_dict(self, state: dict, model=None) -> dict:
        """`state` as `state_dict` gives it, checked (a ConfigError names what is wrong); with
        `model`, the best weights must be all of its parameters, of their shapes."""
        for key, kind in (("best", float), ("waited", int), ("stopped", bool)):
            if not isinstance(state.get(key), kind) or (kind is not bool and isinstance(state[key], bool)):
                raise ConfigError(f"EarlyStopping state {key!r} must be a {kind.__name__}, got {state.get(key)!r}")
        if math.isnan(state["best"]) or state["waited"] < 0:
            raise ConfigError(f"EarlyStopping state best={state['best']}, waited={state['waited']} is impossible")
        best = {k.removeprefix("best/"): v for k, v in state.items() if k.startswith("best/")}
        integral = [k for k, v in best.items() if np.asarray(v).dtype.kind != "f"]
        if integral:
            raise ConfigError(f"EarlyStopping best weights {integral[0]!r} are not floating point")
        if best and model is not None:
            model.check_state_dict(best)  # names, shapes and dtypes, as a load of them would check
        return state

    def load_state_dict(self, state: dict) -> None:
        state = self.check_state_dict(state)
        weights = {k.removeprefix("best/"): np.asarray(v) for k, v in state.items() if k.startswith("best/")}
        self.best, self.waited, self.stopped = state["best"], state["waited"], state["stopped"]
        self.best_state = weights or None


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


def _pair(data, what: str, dtype=None):
    """`data` = (inputs, targets) as host arrays, or a ConfigError naming `what`; with `dtype`
    (the model's, a floating one), floating inputs and targets cast to it (float32 data for a
    float64 model, say: backends other than NumPy refuse to mix them)."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ConfigError(f"{what} must be (inputs, targets) or a Batches, got {type(data).__name__}")
    inputs, targets = _host(data[0]), _host(data[1])
    if inputs.ndim == 0 or targets.ndim == 0:
        raise ConfigError(f"{what}: inputs and targets must be arrays with a row per sample, not scalars")
    if len(inputs) != len(targets):
        raise ConfigError(f"{what} has {len(inputs)} inputs but {len(targets)} targets")
    if len(inputs) == 0:
        raise ConfigError(f"{what} is empty (0 samples)")
    if dtype is not None and np.dtype(dtype).kind == "f":  # integer inputs (ids, say) stay integers
        inputs = inputs.astype(dtype, copy=False) if inputs.dtype.kind == "f" else inputs
        targets = targets.astype(dtype, copy=False) if targets.dtype.kind == "f" else targets
    return inputs, targets


def _model_dtype(model) -> str | None:
    """The dtype of the model's first parameter (by name), or None for a model without any."""
    first = next(iter(model.parameters()), None)
    return None if first is None else dtype_name(first.dtype)


def _host(value) -> np.ndarray:
    """A host array of a Tensor, a backend array or anything NumPy takes."""
    value = value.data if isinstance(value, Tensor) else value
    return to_numpy(value) if is_array_api_obj(value) and not isinstance(value, np.ndarray) else np.asarray(value)


def _loss_function(loss):
    """`loss` as a function: a name of backprop.losses.LOSSES ("cross_entropy", "mse", ...) or a callable."""
    from backprop.losses import LOSSES

    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ConfigError(f"unknown loss {loss!r}; known losses: {', '.join(LOSSES)} (or pass a function)")
        return LOSSES[loss]
    if not callable(loss):
        raise ConfigError(f"loss must be a function loss(outputs, targets) or a name, got {type(loss).__name__}")
    return loss


def _as_batches(data, batch_size: int, shuffle: bool, what: str = "the data", shard=(0, 1), dtype=None) -> Batches:
    if isinstance(data, Batches):
        if (data.rank, data.ranks) != tuple(shard):
            raise ConfigError(f"{what} is a Batches of shard {data.rank} of {data.ranks}, this is rank {shard[0]} "
                              f"of {shard[1]}: give Batches(..., shard={tuple(shard)}) or the arrays")  # fmt: skip
        return data
    inputs, targets = _pair(data, what, dtype)
    return Batches(inputs, targets, batch_size, shuffle=shuffle, shard=shard)


def _first_non_finite(array, what: str, kind: str) -> None:
    """A ConfigError naming the first inf or NaN of a floating `array` (host or backend), if any."""
    if isinstance(array, np.ndarray):
        if array.dtype.kind not in "fc" or np.isfinite(array).all():
            return
    else:  # a backend array (Batches): one check on the device, one read
        xp = namespace_of(array)
        if not xp.isdtype(array.dtype, ("real floating", "complex floating")) or bool(xp.all(xp.isfinite(array))):
            return
        array = to_numpy(array)
    index = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
    raise ConfigError(
        f"{what} has a non-finite {kind} ({array[index]}) in sample {index[0]} (index {index}): "
        "fix or drop that sample before training"
    )


def _check_dataset(data, what: str) -> None:
    """`data` is (inputs, targets) or Batches, not empty, with no inf or NaN (checked once, before training)."""
    inputs, targets = (data.inputs, data.targets) if isinstance(data, Batches) else _pair(data, what)
    _first_non_finite(inputs, what, "input")
    _first_non_finite(targets, what, "target")


def _check_fit_arguments(train, epochs, batch_size, validation, metrics, callbacks=(), checkpoint=None) -> None:
    """Every argument of `fit` that could fail or be silently wrong later, checked before any work."""
    positive_int("epochs", epochs)
    positive_int("batch_size", batch_size)
    _check_metrics(metrics)
    _check_dataset(train, "the training set")
    if validation is not None:
        _check_dataset(validation, "the validation set")
    record = {"epoch", "seconds", "loss", *metrics} | (
        {f"val_{k}" for k in ("loss", *metrics)} if validation is not None else set()
    )
    _check_callback_list(callbacks, record)
    if checkpoint is not None:
        check_checkpoint_path(checkpoint)


def _check_callback_list(callbacks, record: set) -> None:
    """A list of objects with `on_epoch_end`; a callback's `monitor` must be in each epoch's record."""
    if not isinstance(callbacks, (list, tuple)):
        raise ConfigError(f"callbacks must be a list, e.g. [{type(callbacks).__name__}(...)], not one callback")
    for callback in callbacks:
        if isinstance(callback, type) or not callable(getattr(callback, "on_epoch_end", None)):
            raise ConfigError(f"callback {callback!r} is not an object with on_epoch_end(model, record)")
        monitor = getattr(callback, "monitor", None)
        if isinstance(monitor, str) and monitor not in record:
            raise ConfigError(
                f"{type(callback).__name__} monitors {monitor!r}, but each epoch records only {sorted(record)}"
                + (" (no validation set was given)" if monitor.startswith("val_") and "val_loss" not in record else "")
            )


class DivergedError(UserError, FloatingPointError):
    """The training or validation loss became inf or NaN."""


def _check_finite(value: float, epoch: int, what: str, hint="training diverged (try a lower learning rate)") -> None:
    if not math.isfinite(value):
        raise DivergedError(f"{what} became {value} in epoch {epoch}: {hint}")


METRICS = ("accuracy",)


def _check_metrics(metrics) -> None:
    if isinstance(metrics, str):
        raise ConfigError(f"metrics must be a list of names, e.g. ({metrics!r},), not the string {metrics!r}")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric {unknown[0]!r}; known metrics: {', '.join(METRICS)}")


class _Tally:
    """Loss and correct predictions summed on the device and read once at the end. The steps'
    losses and outputs are kept and reduced FLUSH steps at a time, in a few whole-array calls
    rather than several small ones per step (float16 losses are summed in float32: an epoch's sum
    would overflow float16's 65504). The losses are summed in runs of exactly FLUSH steps, in
    order, however the steps came (one by one or stacked): the same sum to the last bit for any
    `steps_per_execution`. On a backend whose captured steps hand out buffers they overwrite
    (CUDA graphs), what is kept is copied first."""

    FLUSH = 64

    def __init__(self, xp, metrics):
        _check_metrics(metrics)
        self.xp, self.accuracy = xp, "accuracy" in metrics
        self.loss, self.correct, self.count = 0.0, 0, 0
        self.narrow = getattr(xp, "float16", None)
        self.copies = backend_of(xp).capture == "cuda-graph"
        self._clear()

    def add(self, loss, out, targets) -> None:
        if self.copies:
            loss, out = copy_array(loss), copy_array(out)
        self.singles.append(loss)
        self.sizes.append(out.shape[0])
        if self.accuracy:
            self.outs.append(out)
            self.targets.append(targets)
        if len(self.sizes) == self.FLUSH:
            self._flush()

    def add_many(self, losses, outs, targets) -> None:
        """Several steps at once: their losses (K,), outputs (K, batch, ...) and targets (K, batch, ...)."""
        if self.copies:
            losses, outs = copy_array(losses), copy_array(outs)
        if self.accuracy:  # counts of correct predictions add up exactly, flushed whenever
            self.outs.append(self.xp.reshape(outs, (-1, *outs.shape[2:])))
            self.targets.append(self.xp.reshape(targets, (-1, *targets.shape[2:])))
        self._stack_singles()  # the steps before these stay before them
        k, size, done = losses.shape[0], outs.shape[1], 0
        while done < k:
            take = min(k - done, self.FLUSH - len(self.sizes))
            self.pieces.append(losses if take == k else losses[done : done + take])
            self.sizes += [size] * take
            done += take
            if len(self.sizes) == self.FLUSH:
                self._flush()

    def _stack_singles(self) -> None:
        if self.singles:
            self.pieces.append(self.xp.stack([self.xp.asarray(value) for value in self.singles]))
            self.singles = []

    def _flush(self) -> None:
        if not self.sizes:
            return
        xp = self.xp
        self._stack_singles()
        losses = self.pieces[0] if len(self.pieces) == 1 else xp.concat(self.pieces)
        if self.narrow is not None and losses.dtype == self.narrow:
            losses = xp.astype(losses, xp.float32)
        sizes = xp.asarray(self.sizes, dtype=losses.dtype, device=device_of(losses))
        self.loss = self.loss + xp.sum(losses * sizes)
        self.count += sum(self.sizes)
        if self.accuracy and self.outs:
            out, targets = xp.concat(self.outs, axis=0), xp.concat(self.targets, axis=0)
            self.correct = self.correct + _correct(xp, out, targets)
        self._clear()

    def _clear(self) -> None:
        """Nothing kept: the sums so far hold every step flushed."""
        self.pieces, self.singles, self.sizes = [], [], []  # losses: 1-d arrays in order, then 0-d ones
        self.outs, self.targets = [], []

    def record(self, reduce_sums=None) -> dict:
        """The mean loss (and accuracy); `reduce_sums` adds up the sums of every rank first."""
        self._flush()
        correct = float(to_numpy(self.correct)) if self.accuracy else 0.0
        sums = [float(to_numpy(self.loss)), correct, float(self.count)]  # the one read from the device
        loss, correct, count = sums if reduce_sums is None else reduce_sums(sums)
        result = {"loss": loss / count}
        if self.accuracy:
            result["accuracy"] = correct / count
        return result


def _check_labels(model, datasets: dict) -> None:
    """Class labels (integer targets of shape (N,)) of whole datasets in 0..C-1 for a model of C
    outputs, checked once on the host before training: a captured step's replays read no values."""
    labelled = {
        what: b for what, b in datasets.items() if b.targets.ndim == 1 and b.xp.isdtype(b.targets.dtype, "integral")
    }
    if not labelled:
        return
    outputs = _output_width(model, next(iter(labelled.values())))
    for what, batches in labelled.items():
        labels = to_numpy(batches.targets)
        bad = np.flatnonzero((labels < 0) | (labels >= outputs))
        if outputs > 1 and bad.size:
            raise ConfigError(
                f"{what} labels must be in 0..{outputs - 1} for {outputs} outputs: label {labels[bad[0]]} "
                f"at index {bad[0]} ({bad.size} out of range)"
            )


@no_grad()
def _output_width(model, batches: Batches) -> int:
    """How many outputs the model gives a sample (one sample, in eval mode: no random numbers drawn)."""
    with evaluating(model):
        return model(Tensor(batches.inputs[:1, ...])).shape[-1]


def _run_epoch(step: TrainStep, batches: Batches, metrics, bar, reduce_sums=None, per_call: int = 1) -> dict:
    """One pass over `batches`, `per_call` batches to a call of the step, stacked in one piece
    each (`Batches.groups`); an epoch's last, smaller batch and the batches of an unfinished
    group run one by one."""
    tally = _Tally(batches.xp, metrics)
    groups = batches.groups(per_call) if per_call > 1 else ((x, y, False) for x, y in batches)
    for inputs, targets, stacked in groups:
        if stacked:
            losses, outs = step.run_stacked(inputs, targets)
            tally.add_many(losses, outs, targets)
            bar.update(per_call)
        else:
            tally.add(*step(inputs, targets), targets)
            bar.update(1)
    return tally.record(reduce_sums)


def _check_world_size(resume, size: int) -> None:
    saved = checkpoint_metadata(resume).get("world_size", 1)
    if saved != size:
        raise ConfigError(
            f"--resume {resume}: the checkpoint was written by {count(saved, 'process')}, this run has {size}: "
            "resume with the same number of processes (the shards of each epoch depend on it)"
        )


@no_grad()
def evaluate(model, loss_fn, data, batch_size: int = 1000, metrics=("accuracy",)) -> dict:
    """Mean loss (and accuracy) over `data` = (inputs, targets) or Batches, in eval mode.

    Empty data is a ConfigError (a mean over no samples has no value); inf or NaN inputs give
    an inf or NaN loss, as they should."""
    batches = _as_batches(data, batch_size, shuffle=False, what="evaluate's data", dtype=_model_dtype(model))
    return _evaluate(model, _loss_function(loss_fn), batches, metrics)


def _evaluate(model, loss_fn, batches: Batches, metrics, reduce_sums=None) -> dict:
    """evaluate's mean over `batches`; with `reduce_sums`, over the batches of every rank together."""
    tally = _Tally(batches.xp, metrics)
    with evaluating(model):
        for inputs, targets in batches:
            out = model(Tensor(inputs))
            tally.add(loss_fn(out, targets).data, out.data, targets)
    return tally.record(reduce_sums)


def _validation_shard(validation, batch_size: int, ranks, dtype=None) -> tuple[Batches, bool]:
    """The validation batches this rank evaluates, and whether they are a shard (rows r::W, every
    sample on one rank: the ranks' sums then add up to the whole set's). A Batches, or a set of
    fewer samples than ranks, is evaluated whole on every rank."""
    size = max(batch_size, 1000)
    if ranks.size == 1 or isinstance(validation, Batches):
        return _as_batches(validation, size, False, "the validation set", dtype=dtype), False
    inputs, targets = _pair(validation, "the validation set", dtype)
    if len(inputs) < ranks.size:
        return Batches(inputs, targets, size, shuffle=False), False
    return Batches(inputs[ranks.rank :: ranks.size], targets[ranks.rank :: ranks.size], size, shuffle=False), True


@no_grad()
def predict(model, inputs, batch_size: int = 1000):
    """The model's outputs for `inputs` (host or backend array), as one backend array (not
    classes: `predict_classes` gives those).

    Numbers are cast to the parameters' dtype first (as `model(x)` does with a host array). No rows
    give an empty array of shape (0, outputs), as `model(x[:0])` does in PyTorch."""
    host = _host(inputs)
    if host.ndim == 0:
        raise ConfigError("predict needs an array with a row per sample, not a scalar")
    dtype = _model_dtype(model)
    if dtype is not None and host.dtype.kind in "biuf":
        host = host.astype(dtype, copy=False)
    with evaluating(model):
        if len(host) == 0:
            positive_int("batch_size", batch_size)
            outs = [model(Tensor(get_backend().asarray(host))).data]
        else:
            outs = [model(Tensor(x)).data for x, _ in Batches(host, np.zeros(len(host)), batch_size, shuffle=False)]
    return namespace_of(outs[0]).concat(outs, axis=0)


def predict_classes(model, inputs, batch_size: int = 1000, threshold: float = 0.5):
    """The class each sample's outputs pick, as a backend int64 array: the index of the largest
    output, or for a model with one output, 1 where it is above `threshold` (0.5 for a sigmoid
    probability, as fit's accuracy counts; give 0.0 for a logit). `predict` gives the outputs.

    >>> import backprop as bp
    >>> model = bp.nn.mlp([2, 3], "tanh", init="zeros")
    >>> bp.to_numpy(predict_classes(model, [[0.0, 1.0], [2.0, 3.0]])).tolist()
    [0, 0]
    """
    out = predict(model, inputs, batch_size)
    xp = namespace_of(out)
    if out.ndim != 2:
        raise ConfigError(f"predict_classes needs outputs of shape (samples, outputs), the model gives {out.shape}")
    if out.shape[1] == 1:
        return xp.astype(out[:, 0] > threshold, xp.int64)
    return xp.astype(xp.argmax(out, axis=1), xp.int64)


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
    verbose="auto",
    shuffle: bool = True,
    checkpoint=None,
    resume=None,
    capture: bool = False,
    gradient_hooks=(),
    steps_per_execution: int = 1,
) -> History:
    """Train `model` on `train` = (inputs, targets) host arrays (or Batches) for `epochs` epochs.

    `loss(outputs, targets)` gives a scalar tensor (or a name: "cross_entropy", "mse", ...);
    `train` and `validation` hold host arrays, backend arrays or Tensors; `validation` is
    evaluated after each epoch.
    `callbacks` have `on_epoch_end(model, record) -> bool` (True stops training); one with state
    to checkpoint has `state_dict()`, `load_state_dict(state)` and `check_state_dict(state, model)`.
    `checkpoint` (a .npz path) is written after every epoch; `resume` (a checkpoint path) continues
    that run: model, optimizer, random state and history, so the result equals an uninterrupted run.
    `capture=True` captures the training step and replays it (backprop.step.TrainStep): the same
    numbers, less Python per step; a step that cannot be captured warns and runs eagerly.
    `gradient_hooks` run on the gradients between backward and the update (`bp.optim.ClipGradNorm`);
    the steps keep no gradients (`.grad` is None after fit, as `TrainStep(..., keep_grads=False)`).
    On JAX a captured step consumes the parameter arrays of the step before (see TrainStep): a
    callback that keeps `model.state_dict()` between epochs keeps copies (`bp.to_numpy`).
    `steps_per_execution` (as in Keras): batches handed to the step K at a time (`TrainStep.run_stacked`:
    one compiled call of K steps on JAX once captured, a loop elsewhere); the same numbers.
    `verbose` (as in Keras): 0 silent, 1 a progress bar per epoch (tqdm; without it, one line per
    epoch), 2 one line per epoch, "auto" 1 on a terminal and 2 elsewhere.
    Checked before any work (ConfigError): positive integer `epochs`, `batch_size` and
    `steps_per_execution`, known
    `metrics`, `verbose`, and training and validation sets that are not empty and hold no inf or NaN.
    """
    loss = _loss_function(loss)
    verbose = resolve_verbose(verbose)
    # plain ints from here: NumPy's small integers wrap around (np.uint8(255) + 1 is 0)
    epochs, batch_size = positive_int("epochs", epochs), positive_int("batch_size", batch_size)
    steps_per_execution = positive_int("steps_per_execution", steps_per_execution)
    _check_fit_arguments(train, epochs, batch_size, validation, metrics, callbacks, checkpoint)
    ranks = distributed.world()
    dtype = _model_dtype(model)
    batches = _as_batches(train, batch_size, shuffle, "the training set", (ranks.rank, ranks.size), dtype)
    no_validation = (None, False)
    validation, sharded = (
        _validation_shard(validation, batch_size, ranks, dtype) if validation is not None else no_validation
    )
    _check_labels(model, {"training": batches, **({"validation": validation} if validation is not None else {})})
    history, start = History(), 1
    distributed.check_same_setup(model, optimizer)
    if resume is not None:
        _check_world_size(resume, ranks.size)
        meta = load_checkpoint(resume, model, optimizer, callbacks)
        history, start = History(meta["history"]), meta["epoch"] + 1
        if any(getattr(callback, "stopped", False) for callback in callbacks):
            return history  # the run had stopped early: there is nothing left to train
    distributed.broadcast_state(model, optimizer)  # every rank starts as rank 0, whatever its seed
    all_reduce = distributed.AllReduce(ranks)
    hooks = [*([all_reduce] if ranks.size > 1 else []), *gradient_hooks]  # average first, then clip
    model.train()
    step = TrainStep(model, loss, optimizer, capture=capture, gradient_hooks=hooks, keep_grads=False)
    for epoch in range(start, epochs + 1):
        began = time.perf_counter()
        shown = verbose if ranks.is_main else 0
        with EpochReport(shown, epoch, epochs, len(batches)) as bar:
            tally = _run_epoch(step, batches, metrics, bar, all_reduce.reduce_sums, steps_per_execution)
            record = {"epoch": epoch, **tally}
            _check_finite(record["loss"], epoch, "the training loss")
            if validation is not None:
                scores = _evaluate(model, loss, validation, metrics, all_reduce.reduce_sums if sharded else None)
                record.update({f"val_{k}": v for k, v in scores.items()})
                _check_finite(record["val_loss"], epoch, "the validation loss", "the model overflows on that set")
            record["seconds"] = time.perf_counter() - began
            bar.finish(record)
        history.epochs.append(record)
        stops = [callback.on_epoch_end(model, record) for callback in callbacks]
        if checkpoint is not None and ranks.is_main:  # after the callbacks: a decayed lr, a patience count
            save_checkpoint(checkpoint, model, optimizer, epoch, history, callbacks, world_size=ranks.size)
        if any(stops):
            break
    return history
