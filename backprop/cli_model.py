"""`backprop evaluate` and `backprop predict`: a model saved by `backprop train --save` (or
`bp.save_model`), loaded without its code, scored on a dataset or run on inputs from a file.

Everything is checked before any output is written: the model file, the inputs (numbers, finite,
as many per row as the model takes) and the output's format and folder; the output is written
atomically, so a failed run leaves no half file.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

import backprop as bp
from backprop.data import DATASETS
from backprop.errors import ConfigError, count
from backprop.files import atomic_write
from backprop.summary import input_features, leaves

INPUT_SUFFIXES = (".npy", ".csv", ".txt")


def add_parsers(commands, formatter, backend_options, positive) -> None:
    """The evaluate and predict sub-commands (`backend_options(parser)` adds --backend/--device;
    `positive` is the argparse type of a positive integer)."""
    e = commands.add_parser("evaluate", help="loss and accuracy of a saved model on a dataset",
                            description="Score a model written by `backprop train --save`.",
                            formatter_class=formatter)  # fmt: skip
    e.add_argument("model", metavar="MODEL", help="a model file (.npz or .safetensors) from --save or bp.save_model")
    e.add_argument("--dataset", default="digits", choices=[*DATASETS, "spirals"], help="what to score it on")
    e.add_argument("--split", default="test", choices=["train", "test"], help="which part of the dataset")
    e.add_argument("--data-dir", help="folder with the dataset's files (default: $BACKPROP_DATA_DIR, then the cache)")
    e.add_argument("--loss", choices=sorted(bp.losses.LOSSES), help="loss (default: the one the model was saved with)")
    e.add_argument("--batch-size", type=positive, default=1000, help="samples per forward pass")
    backend_options(e)
    p = commands.add_parser("predict", help="a saved model's classes (or outputs) for inputs from a file",
                            description="Run a model written by `backprop train --save` on rows of a file.",
                            formatter_class=formatter)  # fmt: skip
    p.add_argument("model", metavar="MODEL", help="a model file (.npz or .safetensors) from --save or bp.save_model")
    p.add_argument("inputs", metavar="INPUTS", help="one sample per row: a .npy array or a .csv/.txt of numbers")
    p.add_argument("--output", metavar="PATH", help="write the predictions to a .npy or .csv file (default: print)")
    p.add_argument("--outputs", action="store_true", help="the model's outputs rather than the class of each row")
    p.add_argument("--batch-size", type=positive, default=1000, help="samples per forward pass")
    backend_options(p)


def _load(path):
    if not str(path).endswith((".npz", ".safetensors")):
        raise ConfigError(f"{path}: a model file is a .npz or .safetensors written by --save or bp.save_model")
    if not Path(path).is_file():
        raise ConfigError(f"{path}: no such model file")
    model = bp.load_model(path)
    if not model.parameters():
        raise ConfigError(f"{path}: the model has no parameters, so nothing to evaluate or predict with")
    return model, bp.io.model_info(path)


def _check_width(model, width: int, what: str, path) -> None:
    expected = input_features(list(leaves(model)))
    if expected is not None and width != expected:
        raise ConfigError(f"{what} has {count(width, 'input')} per sample; the model in {path} takes {expected}")


def evaluate(args: argparse.Namespace) -> int:
    from backprop.cli import _targets, load_dataset

    model, info = _load(args.model)
    loss = args.loss or info.get("loss")
    if loss is None:
        raise ConfigError(f"{args.model} does not say which loss it was trained with: give --loss")
    (x, y), test = load_dataset(args.dataset, args.data_dir)
    x, y = test if args.split == "test" else (x, y)
    _check_width(model, x.shape[1], f"{args.dataset} ({args.split})", args.model)
    dtype = bp.backend.dtype_name(model.parameters()[0].dtype)
    outputs, classes = bp.predict(model, x[:1]).shape[-1], int(y.max()) + 1
    if outputs != classes and not (outputs == 1 and classes == 2):
        raise ConfigError(f"{args.dataset} has {classes} classes; the model in {args.model} gives "
                          f"{count(outputs, 'output')}")  # fmt: skip
    scores = bp.evaluate(model, loss, (x.astype(dtype), _targets(y, loss, outputs, dtype)), args.batch_size)
    print(f"{args.dataset} {args.split} ({len(x)} samples): {loss} loss {scores['loss']:.4f}, "
          f"accuracy {scores['accuracy']:.4f}")  # fmt: skip
    return 0


def _read_inputs(path) -> np.ndarray:
    suffix = Path(path).suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise ConfigError(f"{path}: inputs are read from {', '.join(INPUT_SUFFIXES)} files, not {suffix or 'this'}")
    if not Path(path).is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NumPy warns of an empty file; the check below names it
            rows = np.load(path, allow_pickle=False) if suffix == ".npy" else np.loadtxt(path, delimiter=",", ndmin=2)
    except ValueError as error:
        raise ConfigError(f"{path}: not an array of numbers ({' '.join(str(error).split())[:200]})") from None
    rows = rows[None, :] if rows.ndim == 1 else rows
    if rows.ndim != 2 or rows.dtype.kind not in "biuf" or rows.size == 0:
        raise ConfigError(f"{path}: needs one row of numbers per sample, got {rows.dtype} of shape {rows.shape}")
    finite = np.isfinite(rows).all(axis=1)
    if not finite.all():
        raise ConfigError(f"{path}: holds inf or NaN (row {int(np.argmin(finite))})")
    return rows


def predict(args: argparse.Namespace) -> int:
    if args.output is not None and Path(args.output).suffix.lower() not in (".npy", ".csv"):
        raise ConfigError(f"--output {args.output}: predictions are written as .npy or .csv")
    if args.output is not None and not Path(args.output).absolute().parent.is_dir():
        raise ConfigError(f"--output {args.output}: no folder {Path(args.output).parent}")
    model, info = _load(args.model)
    rows = _read_inputs(args.inputs)
    _check_width(model, rows.shape[1], args.inputs, args.model)
    threshold = 0.0 if info.get("loss") == "bce_logits" else 0.5  # one output: a logit, or a probability
    if args.outputs:
        found = bp.predict(model, rows, args.batch_size)
    else:
        found = bp.predict_classes(model, rows, args.batch_size, threshold=threshold)
    found = bp.to_numpy(found)
    if args.output is None:
        for row in found:
            print(row if found.ndim == 1 else ",".join(f"{v:.6g}" for v in row))
        return 0
    if args.output.lower().endswith(".npy"):
        atomic_write(args.output, lambda f: np.save(f, found, allow_pickle=False))
    else:
        fmt = "%d" if found.dtype.kind in "iu" else "%.9g"
        atomic_write(args.output, lambda f: np.savetxt(f, found, fmt=fmt, delimiter=","))
    print(f"{len(found)} predictions written to {args.output}")
    return 0
