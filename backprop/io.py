"""Saving weights and checkpoints: `.npz` or `.safetensors` (never pickle), written atomically.

Files are written through `backprop.files.atomic_write`: an interrupted save never replaces a
good file with half of one.

>>> import os, tempfile, backprop as bp
>>> model = bp.nn.Linear(3, 2)
>>> path = os.path.join(tempfile.mkdtemp(), "weights.npz")
>>> bp.io.save_weights(model, path)
>>> bp.io.load_weights(bp.nn.Linear(3, 2), path)
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from backprop.backend import get_rng_state, set_rng_state, to_numpy
from backprop.errors import MissingDependency, UserError
from backprop.files import atomic_write


class FileFormatError(UserError, ValueError):
    """A weights or checkpoint file that cannot be read, or a path with a suffix that cannot be written."""


def check_weights_path(path) -> None:
    """Raise now, before any work, if weights cannot be saved at `path` (suffix, package)."""
    if str(path).endswith(".safetensors"):
        try:
            import safetensors.numpy  # noqa: F401
        except ImportError as error:
            raise MissingDependency("saving .safetensors needs the safetensors package (or use a .npz path)") from error
    elif not str(path).endswith(".npz"):
        raise FileFormatError(f"{path}: weights are saved as .npz or .safetensors; choose one of those suffixes")


def check_checkpoint_path(path) -> None:
    """Raise now, before any work, if a checkpoint cannot be saved at `path`."""
    if not str(path).endswith(".npz"):
        raise FileFormatError(f"{path}: checkpoints are .npz files")


def _save_arrays(path, arrays: dict) -> None:
    check_weights_path(path)
    if str(path).endswith(".safetensors"):
        from safetensors.numpy import save

        blob = save({k: np.ascontiguousarray(v) for k, v in arrays.items()})
        atomic_write(path, lambda f: f.write(blob))
    else:
        atomic_write(path, lambda f: np.savez(f, **arrays))


def _load_arrays(path) -> dict:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.numpy import load_file

            return load_file(str(path))
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise FileFormatError(f"{path}: not a readable weights file ({error})") from error


def save_weights(model, path) -> None:
    """Write the model's parameters (by dotted name) to `path` (.npz or .safetensors)."""
    _save_arrays(path, {name: to_numpy(a) for name, a in model.state_dict().items()})


def load_weights(model, path) -> None:
    """Read parameters written by `save_weights` into `model` (names and shapes must match)."""
    model.load_state_dict(_load_arrays(path))


def save_checkpoint(path, model, optimizer, epoch: int, history=None) -> None:
    """Model, optimizer state, epoch, random state and history in one .npz, written atomically."""
    arrays = {f"model/{name}": to_numpy(a) for name, a in model.state_dict().items()}
    opt = optimizer.state_dict()
    for i, state in enumerate(opt["state"]):
        arrays.update({f"optimizer/{i}/{key}": value for key, value in state.items()})
    meta = {
        "epoch": epoch,
        "optimizer": {"type": type(optimizer).__name__, "hyper": opt["hyper"], "count": len(opt["state"])},
        "rng_state": get_rng_state(),
        "history": history.epochs if history is not None else [],
    }
    arrays["meta"] = np.array(json.dumps(meta))
    check_checkpoint_path(path)
    _save_arrays(path, arrays)


def _metadata(path, meta) -> dict:
    """A checkpoint's metadata, with every field that loading reads present."""
    try:
        meta = json.loads(str(meta))
        [meta["optimizer"][field] for field in ("type", "hyper", "count")]
        [meta[field] for field in ("epoch", "rng_state", "history")]
    except (ValueError, KeyError, TypeError) as error:  # not JSON, a field missing, not a dict
        raise FileFormatError(f"{path}: not a readable backprop checkpoint (metadata: {error!r})") from None
    return meta


def load_checkpoint(path, model, optimizer) -> dict:
    """Restore what `save_checkpoint` wrote; returns its metadata (epoch, history, ...)."""
    arrays = _load_arrays(path)
    if "meta" not in arrays:
        raise FileFormatError(f"{path}: not a backprop checkpoint (no metadata)")
    meta = _metadata(path, arrays["meta"])
    if meta["optimizer"]["type"] != type(optimizer).__name__:
        raise FileFormatError(
            f"{path}: checkpoint holds a {meta['optimizer']['type']} state, not {type(optimizer).__name__}"
        )
    model.load_state_dict({k.removeprefix("model/"): v for k, v in arrays.items() if k.startswith("model/")})
    states = [{} for _ in range(meta["optimizer"]["count"])]
    for key, value in arrays.items():
        if key.startswith("optimizer/"):
            _, i, name = key.split("/", 2)
            states[int(i)][name] = value
    optimizer.load_state_dict({"hyper": meta["optimizer"]["hyper"], "state": states})
    set_rng_state(meta["rng_state"])
    return meta
