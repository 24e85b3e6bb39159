"""The command line: `backprop train`, `backprop evaluate`, `backprop predict` (cli_model.py),
`backprop info` (and `backprop bench`, see bench/).

Bad input (a `backprop.errors.UserError`, or a file that cannot be read or written) exits non-zero
with one line. Anything else is a bug in backprop and keeps its traceback. `train` checks all its
options before any work (output paths are tried for real, the model size is bounded by
MAX_PARAMETERS, options that would be ignored are refused) and stops a run whose training loss
grows far above the untrained model's. `--backend`/`--device` override BACKPROP_BACKEND and
BACKPROP_DEVICE; `info` shows which one is selected.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import platform
import sys
from pathlib import Path

import numpy as np

import backprop as bp
from backprop import cli_model
from backprop.backend import installed_backends
from backprop.backends import BACKENDS, BackendError
from backprop.data import DATASETS
from backprop.errors import ConfigError, UserError, count
from backprop.files import check_writable
from backprop.train import DivergedError

# dataset -> what its images are (inputs, classes) and a sensible hidden layer
SHAPES = {"digits": (64, 10, 32), "mnist": (784, 10, 30), "fashion-mnist": (784, 10, 100), "spirals": (2, 2, 8)}
OUTPUT_ACTIVATION = {"quadratic": "sigmoid", "mse": "sigmoid", "bce": "sigmoid", "cross_entropy": None}
# the most parameters `backprop train` builds a model with (400 MB a copy in float32; training holds
# about four copies: weights, gradients and Adam's two moments): a bigger --layers is refused up front
MAX_PARAMETERS = 100_000_000


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        self.exit(2, f"backprop: error: {message}\n")


def _number(kind, low: float, low_included: bool, what: str):
    """An argparse type: `kind(text)` at least (or above) `low`; `what` names it in the error."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not (value >= low if low_included else value > low):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive = _number(int, 1, True, "a positive integer")
_seed = _number(int, 0, True, "a non-negative integer")
_positive_float = _number(float, 0.0, False, "a positive number")
_non_negative_float = _number(float, 0.0, True, "a number >= 0")


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help line ends with its default, unless it has none or the line gives it."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        absent = default is None or default is False or default is argparse.SUPPRESS
        if absent or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: {default})".lstrip()


def _backend_options(p) -> None:
    p.add_argument(
        "--backend",
        default=None,
        help=f"array backend (default: $BACKPROP_BACKEND, then numpy; installed: {', '.join(installed_backends())})",
    )
    p.add_argument("--device", default=None, help="device of the backend, e.g. cuda:1 (default: $BACKPROP_DEVICE)")


def _train_parser(commands) -> None:
    p = commands.add_parser(
        "train",
        help="train a multilayer perceptron (default: the bundled digits)",
        description="Train a multilayer perceptron and report its accuracy on the test split.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--dataset", default="digits", choices=[*DATASETS, "spirals"], help="what to train on")
    p.add_argument("--data-dir", help="folder with the dataset's files (default: $BACKPROP_DATA_DIR, then the cache)")
    p.add_argument(
        "--layers",
        help=f"layer sizes, e.g. 784,30,10 (default: inputs,hidden,classes; at most {MAX_PARAMETERS:,} parameters)",
    )
    p.add_argument("--activation", default="relu", choices=sorted(bp.nn.ACTIVATIONS), help="hidden activation")
    p.add_argument("--loss", default="cross_entropy", choices=sorted(OUTPUT_ACTIVATION), help="loss function")
    p.add_argument("--optimizer", default="adam", choices=sorted(bp.optim.OPTIMIZERS), help="optimizer")
    p.add_argument(
        "--lr", type=_positive_float, default=None, help="learning rate (default: 0.01 for Adam, 3.0 for SGD)"
    )
    p.add_argument("--momentum", type=_non_negative_float, default=None, help="SGD momentum (default: 0)")
    p.add_argument("--init", default="glorot_uniform", choices=sorted(bp.nn.INITIALIZERS), help="weight init")
    p.add_argument("--batch-size", type=_positive, default=32, help="samples per step")
    p.add_argument("--epochs", type=_positive, default=20, help="passes over the training set")
    _backend_options(p)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="parameter and data dtype")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the initial weights and the shuffling")
    p.add_argument("--plot", metavar="PATH", help="write loss/accuracy curves and first-layer weights here")
    p.add_argument("--save", metavar="PATH", help="write the trained model (.npz or .safetensors)")
    p.add_argument("--checkpoint", metavar="PATH", help="write a resumable checkpoint (.npz) after each epoch")
    p.add_argument("--resume", metavar="PATH", help="continue from a checkpoint written by --checkpoint")
    p.add_argument(
        "--verbose",
        type=int,
        choices=[0, 1, 2],
        default=None,
        help="0 silent, 1 a progress bar, 2 one line per epoch (default: 1 on a terminal, 2 elsewhere)",
    )
    p.add_argument("--no-progress", action="store_true", help="the same as --verbose 0")
    p.add_argument("--capture", action="store_true", help="capture the step once, then replay it: same numbers, faster")
    p.add_argument("--steps-per-execution", type=_positive, default=1, metavar="K",
                   help="batches per call of the step (--capture on JAX: K steps as one compiled call)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="backprop", description="Backpropagation on any array-API backend.")
    parser.add_argument("--version", action="version", version=f"backprop {bp.__version__}")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)
    _train_parser(commands)
    cli_model.add_parsers(commands, _HelpFormatter, _backend_options, _positive)
    commands.add_parser("info", help="backends, versions, devices and the BLAS in use")
    commands.add_parser("bench", help="run the benchmark suite; `backprop bench --help` lists its options")
    return parser


def parse_layers(spec: str | None, dataset: str) -> list[int]:
    inputs, classes, hidden = SHAPES[dataset]
    if spec is None:
        return [inputs, hidden, classes]
    try:
        sizes = [int(part) for part in spec.split(",")]
    except ValueError:
        raise ConfigError(
            f"--layers {spec!r}: give comma-separated integers, e.g. {inputs},{hidden},{classes}"
        ) from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise ConfigError(f"--layers {spec!r}: need at least two positive sizes")
    if sizes[0] != inputs:
        raise ConfigError(f"--layers {spec!r}: {dataset} has {inputs} inputs, so the first size must be {inputs}")
    if sizes[-1] not in (classes, 1 if classes == 2 else classes):
        raise ConfigError(f"--layers {spec!r}: {dataset} has {classes} classes, so the last size must be {classes}")
    parameters = sum((n_in + 1) * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True))
    if parameters > MAX_PARAMETERS:
        raise ConfigError(
            f"--layers {spec!r}: {parameters:,} parameters, more than the {MAX_PARAMETERS:,} this command "
            "trains; use smaller layers"
        )
    return sizes


def selected_backend(args=None) -> tuple[str, str | None, str]:
    """The backend and device asked for, and where they were set: `--backend`/`--device` (in `args`)
    first, then BACKPROP_BACKEND/BACKPROP_DEVICE, then the current backend. A device without a
    backend goes to the backend in force (as `--device` alone does): a device it lacks is an error."""
    flag_backend, flag_device = (args.backend, args.device) if args is not None else (None, None)
    env_backend = os.environ.get("BACKPROP_BACKEND") or None
    env_device = os.environ.get("BACKPROP_DEVICE") or None
    if flag_backend:  # BACKPROP_DEVICE still applies when it goes with no other backend
        if env_device and not flag_device and env_backend in (None, flag_backend):
            return flag_backend, env_device, f"--backend and BACKPROP_DEVICE={env_device!r}"
        return flag_backend, flag_device, "--backend"
    device = flag_device or env_device
    settings = [f"BACKPROP_BACKEND={env_backend!r}"] if env_backend else []
    if env_device and not flag_device:
        settings.append(f"BACKPROP_DEVICE={env_device!r}")
    if not settings:
        return bp.get_backend().name, device, "--device" if flag_device else "the default"
    return env_backend or bp.get_backend().name, device, ", ".join(settings)


def use_selected_backend(args=None) -> bp.backend.Backend:
    """Make the selected backend (see `selected_backend`) the current one; a bad choice is one line
    naming the environment variables it came from."""
    name, device, source = selected_backend(args)
    if source == "the default":
        return bp.get_backend()  # nothing chosen: leave the backend in force as it is
    try:
        return bp.set_backend(name, device)
    except BackendError as error:
        if "BACKPROP" not in source:
            raise
        raise BackendError(f"{source}: {error}") from None


def check_output(path, check) -> None:
    """Raise now, before any training, if the file at `path` could not be written: `check(path)`
    (its format), then a probe file in the folder it would go to (backprop.files.check_writable)."""
    check(path)
    if Path(path).absolute().is_dir():
        raise ConfigError(f"{path}: is a folder; give a file name")
    check_writable(path)


def _resume_metadata(path) -> dict | None:
    """The metadata of the checkpoint at `path` (None where it is not a readable one: loading says why)."""
    try:
        return bp.io.checkpoint_metadata(path)
    except (UserError, OSError):
        return None


def _check_distinct_files(args) -> None:
    """--save, --checkpoint, --resume and --plot name different files, except --checkpoint and
    --resume (a run continued in place): the weights must not overwrite a checkpoint."""
    files = {"--save": args.save, "--checkpoint": args.checkpoint, "--resume": args.resume, "--plot": args.plot}
    given = [(option, Path(path).resolve()) for option, path in files.items() if path]
    for i, (option, path) in enumerate(given):
        for other, other_path in given[i + 1 :]:
            if path == other_path and {option, other} != {"--checkpoint", "--resume"}:
                raise ConfigError(f"{option} and {other} name the same file {files[option]}; give two files")


def _check_resumed_settings(args, meta: dict) -> None:
    """--lr and --momentum, when given with --resume, must be the checkpoint's (which wins)."""
    hyper = meta["optimizer"]["hyper"]
    for option, given, name in (("--lr", args.lr, "lr"), ("--momentum", args.momentum, "momentum")):
        if given is not None and name in hyper and hyper[name] != given:
            raise ConfigError(
                f"{option} {given}: the checkpoint {args.resume} continues with {name} {hyper[name]}; "
                f"leave {option} out, or start a new run"
            )


def check_options(args) -> None:
    """Options that would be ignored, or would do nothing, are errors."""
    if args.momentum is not None and args.optimizer != "sgd":
        raise ConfigError(f"--momentum applies to --optimizer sgd only, not {args.optimizer} (it has betas)")
    if args.no_progress and args.verbose not in (None, 0):
        raise ConfigError(f"--no-progress is --verbose 0; it contradicts --verbose {args.verbose}")
    if args.data_dir is not None and args.dataset not in ("mnist", "fashion-mnist"):
        raise ConfigError(f"--data-dir applies to mnist and fashion-mnist; {args.dataset} needs no files")
    if args.resume is not None:
        meta = _resume_metadata(args.resume)
        epoch = None if meta is None else meta["epoch"]
        if meta is not None:
            _check_resumed_settings(args, meta)
        if epoch is not None and args.epochs <= epoch:
            raise ConfigError(
                f"--resume {args.resume}: the checkpoint is at epoch {epoch}, so --epochs {args.epochs} "
                f"leaves nothing to do; give --epochs above {epoch}"
            )


def _verbose(args):
    return 0 if args.no_progress else ("auto" if args.verbose is None else args.verbose)


def load_dataset(name: str, data_dir):
    if name == "spirals":
        x, y = bp.data.spirals(300, seed=1)
        return (x, y), bp.data.spirals(100, seed=2)
    loader = DATASETS[name]
    kwargs = {} if name == "digits" else {"data_dir": data_dir}
    return loader("train", **kwargs), loader("test", **kwargs)


def _targets(labels: np.ndarray, loss: str, outputs: int, dtype: str):
    """Labels for cross-entropy; one-hot rows (or a column for one output) for the other losses."""
    if loss == "cross_entropy":
        return labels
    if outputs == 1:
        return labels.astype(dtype)[:, None]
    return np.eye(outputs, dtype=dtype)[labels]


class _DivergenceGuard:
    """A `fit` callback: stop with DivergedError when an epoch's training loss has grown far above
    the loss of the untrained model (a learning rate too high), instead of ending at chance with
    exit 0. (An inf or NaN loss `fit` stops itself.) A loss that cannot grow tenfold (a quadratic
    loss of sigmoid outputs) never trips it."""

    FACTOR = 10.0

    def __init__(self, initial_loss: float):
        self.initial_loss = initial_loss

    def on_epoch_end(self, model, record) -> bool:
        if record["loss"] > self.FACTOR * self.initial_loss:
            raise DivergedError(
                f"the training loss rose from {self.initial_loss:.4g} (untrained) to {record['loss']:.4g} in "
                f"epoch {record['epoch']}: training diverged; try a lower --lr"
            )
        return False


def _boundary_plot(plot) -> Path:
    return Path(plot).with_name(f"{Path(plot).stem}-boundary{Path(plot).suffix}")


def train(args) -> int:
    boundary = _boundary_plot(args.plot) if args.plot and args.dataset == "spirals" else None
    for path, check in ((args.save, bp.io.check_weights_path), (args.checkpoint, bp.io.check_checkpoint_path),
                        (args.plot, bp.plots.check_plot_path), (boundary, bp.plots.check_plot_path)):  # fmt: skip
        if path:  # before any work: a bad path must not cost the training run
            check_output(path, check)
    _check_distinct_files(args)
    sizes = parse_layers(args.layers, args.dataset)
    check_options(args)
    use_selected_backend(args)
    bp.manual_seed(args.seed)
    if args.loss == "cross_entropy" and sizes[-1] == 1:
        raise ConfigError("cross_entropy needs one output per class; use --loss bce for a single output")
    (x, y), (xt, yt) = load_dataset(args.dataset, args.data_dir)
    model = bp.nn.mlp(sizes, args.activation, OUTPUT_ACTIVATION[args.loss], init=args.init, dtype=args.dtype)
    loss = bp.losses.LOSSES[args.loss]
    lr = args.lr if args.lr is not None else (3.0 if args.optimizer == "sgd" else 0.01)
    extra = {"momentum": args.momentum or 0.0} if args.optimizer == "sgd" else {}
    optimizer = bp.optim.OPTIMIZERS[args.optimizer](model.parameters(), lr=lr, **extra)
    train_set = (x.astype(args.dtype), _targets(y, args.loss, sizes[-1], args.dtype))
    test_set = (xt.astype(args.dtype), _targets(yt, args.loss, sizes[-1], args.dtype))
    guard = _DivergenceGuard(bp.evaluate(model, loss, train_set, metrics=())["loss"])
    ranks = bp.distributed.world()
    say = print if ranks.is_main else (lambda *a, **k: None)  # under mpiexec, rank 0 speaks and writes
    on = f" on {ranks.size} processes" if ranks.size > 1 else ""
    say(f"training {model} on {args.dataset} ({len(x)} train, {len(xt)} test) with {bp.get_backend().name}{on}")
    history = bp.fit(model, loss, optimizer, train_set, args.epochs, args.batch_size, validation=test_set,
                     verbose=_verbose(args), checkpoint=args.checkpoint, resume=args.resume,
                     capture=args.capture, callbacks=[guard], steps_per_execution=args.steps_per_execution)  # fmt: skip
    last = history.epochs[-1]
    seconds = sum(history["seconds"])
    say(f"final: train accuracy {last['accuracy']:.4f}, test accuracy {last['val_accuracy']:.4f} "
        f"after {count(last['epoch'], 'epoch')} ({seconds:.1f} s)")  # fmt: skip
    if not ranks.is_main:
        return 0
    if args.save:
        bp.io.save_model(model, args.save, loss=args.loss)
        print(f"model written to {args.save} (backprop evaluate|predict {args.save} ...; bp.load_model)")
    if args.plot:
        bp.plots.plot_training(history, model, args.plot, title=f"{args.dataset}: {sizes}", validation_label="test",
                               loss_label=f"{args.loss.replace('_', '-')} loss")  # fmt: skip
        if boundary is not None:
            bp.plots.plot_decision_boundary(model, x, y, boundary, title="decision boundary, training points")
        print(f"plot written to {args.plot}")
    return 0


def _version(packages) -> str | None:
    for package in packages:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def info() -> int:
    print(f"backprop {bp.__version__} on Python {platform.python_version()} ({platform.machine()})")
    for name, entry in BACKENDS.items():
        if not entry.installed():
            print(f"  {name:17} not installed ({entry.install_hint()})")
            continue
        version = _version(entry.distributions) or "?"
        reason = entry.unavailable()
        if reason is None:
            print(f"  {name:17} {version:12} devices {', '.join(map(str, entry.devices()))}")
        else:
            print(f"  {name:17} {version:12} unusable: {reason}")
    try:
        blas = bp.blas.numpy_blas()
        print(f"BLAS (NumPy): {blas['vendor']} {blas['version']} with {count(blas['num_threads'], 'thread')}")
    except (ImportError, RuntimeError) as error:  # no threadpoolctl (the message names the extra), or no BLAS it sees
        print(f"BLAS (NumPy): unknown ({error})")
    name, device, source = selected_backend()
    print(f"selected: backend {name}, device {device or 'default'} (from {source})")
    print(_world_line())
    use_selected_backend()  # a backend or device that cannot be used: one line on stderr, exit 1
    return 0


def _world_line() -> str:
    if not bp.distributed.launched():
        return 'processes: 1 (no MPI launcher; mpiexec -n N runs fit data-parallel, pip install "backprop[mpi]")'
    ranks = bp.distributed.world()
    return f"processes: {ranks.size} under MPI (this is rank {ranks.rank})"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] != ["bench"]:
        args = build_parser().parse_args(argv)
    try:
        if argv[:1] == ["bench"]:  # the suite parses its own options
            from backprop.bench import main as bench_main

            return bench_main(argv[1:])
        if args.command == "train":
            return train(args)
        if args.command == "info":
            return info()
        if args.command in ("evaluate", "predict"):
            use_selected_backend(args)
            return getattr(cli_model, args.command)(args)
        build_parser().print_help()
        return 2
    except (UserError, OSError) as error:  # bad input, or a file that cannot be read or written
        print(f"backprop: error: {error}", file=sys.stderr)
        bp.distributed.abort_if_running(1)  # the other ranks would wait for this one forever
        return 1
    except KeyboardInterrupt:
        print("backprop: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
