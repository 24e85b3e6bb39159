"""Saving weights, models (architecture and weights) and checkpoints: `.npz` or `.safetensors`
(never pickle), written atomically.

Files are written through `backprop.files.atomic_write`: an interrupted save never replaces a
good file with half of one.

>>> import os, tempfile, backprop as bp
>>> model = bp.nn.Linear(3, 2)
>>> path = os.path.join(tempfile.mkdtemp(), "weights.npz")
>>> bp.io.save_weights(model, path)
>>> bp.io.load_weights(bp.nn.Linear(3, 2), path)
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from backprop.backend import get_rng_state, set_rng_state, to_numpy
from backprop.errors import ConfigError, MissingDependency, UserError, a
from backprop.files import MAX_DEFLATE_RATIO, atomic_write, check_writable


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
    if Path(path).is_dir():
        raise FileFormatError(f"{path}: is a folder; give a file name")
    check_writable(path)


def _save_arrays(path, arrays: dict) -> None:
    """Write `arrays` to a .npz or .safetensors file; a 0-d string array (the MODEL_KEY's JSON)
    goes into a safetensors file's text metadata, which holds only strings."""
    check_weights_path(path)
    if str(path).endswith(".safetensors"):
        from safetensors.numpy import save

        texts = {k: str(v) for k, v in arrays.items() if v.dtype.kind == "U"}
        blob = save({k: np.ascontiguousarray(v) for k, v in arrays.items() if k not in texts}, metadata=texts or None)
        atomic_write(path, lambda f: f.write(blob))
    else:
        atomic_write(path, lambda f: np.savez(f, **arrays))


def _load_arrays(path, check=None, only=None) -> dict:
    """The arrays of a .npz or .safetensors file, by name. Every array's header is read first and
    checked against the bytes stored for it, then given to `check({name: (shape, dtype)})` (which
    raises to refuse); only then are arrays read. So a file that lies about its shapes never makes
    a big allocation, and an unreadable file is one FileFormatError naming it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            if str(path).endswith(".safetensors"):
                return _read_safetensors(path, f, check, only)
            with zipfile.ZipFile(f) as archive:
                return _read_npz(path, archive, os.fstat(f.fileno()).st_size, check, only)
    except UserError:
        raise
    except (OSError, EOFError, ValueError, KeyError, TypeError, RuntimeError, NotImplementedError, OverflowError,
            struct.error, zipfile.BadZipFile, zlib.error) as error:  # fmt: skip
        raise _unreadable(path, error) from error


def _unreadable(path, why) -> FileFormatError:
    """The one-line error for a file that is no readable weights file, and why (an exception or a text)."""
    why = " ".join(str(why).split()) or type(why).__name__
    return FileFormatError(f"{path}: not a readable weights file ({why[:300]})")


MAX_NPY_HEADER = 10_000  # NumPy's own limit for a .npy header (np.lib.format's max_header_size)


def _read_npz(path, archive: zipfile.ZipFile, size: int, check, only=None) -> dict:
    infos = archive.infolist()
    if sum(info.compress_size for info in infos) > size:
        raise _unreadable(path, "its members overlap")  # how a zip bomb multiplies itself
    headers = {}
    for info in infos:
        name = info.filename.removesuffix(".npy")
        if name == info.filename or name in headers:
            raise _unreadable(path, f"member {info.filename!r} is not a .npy array, or comes twice")
        ratio = {zipfile.ZIP_STORED: 1, zipfile.ZIP_DEFLATED: MAX_DEFLATE_RATIO}.get(info.compress_type)
        if ratio is None:
            raise _unreadable(path, f"member {info.filename!r} uses compression method {info.compress_type}")
        if info.file_size > ratio * info.compress_size:
            raise _unreadable(path, f"member {info.filename!r} claims more bytes than its compressed size can hold")
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version not in ((1, 0), (2, 0)):
                raise _unreadable(path, f"array {name!r} is in .npy format {version}, not 1.0 or 2.0")
            length_bytes = member.read(2 if version == (1, 0) else 4)
            length = int.from_bytes(length_bytes, "little")
            if length > MAX_NPY_HEADER:  # NumPy would read it whole before refusing it
                raise _unreadable(path, f"array {name!r} has a header of {length} bytes")
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = header(io.BytesIO(length_bytes + member.read(length)))
            offset = member.tell()
        nbytes = math.prod(shape) * dtype.itemsize
        if dtype.hasobject or offset + nbytes != info.file_size:
            raise _unreadable(path, f"array {name!r} declares shape {shape} of {str(dtype):.60}, {nbytes} bytes, "
                                    f"but holds {info.file_size - offset}")  # fmt: skip
        headers[name] = (info, shape, dtype)
    if check is not None:
        check({name: (shape, dtype) for name, (_, shape, dtype) in headers.items()})
    arrays = {}
    for name, (info, _, _) in headers.items():
        if only is not None and name not in only:
            continue
        with archive.open(info) as member:  # read to its end: the zip's checksum is verified
            arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
    return arrays


_SAFETENSORS_DTYPES = {"BOOL": "|b1", "U8": "|u1", "I8": "|i1", "U16": "<u2", "I16": "<i2", "U32": "<u4",
                       "I32": "<i4", "U64": "<u8", "I64": "<i8", "F16": "<f2", "F32": "<f4", "F64": "<f8",
                       "C64": "<c8"}  # fmt: skip


def _unique_names(pairs: list) -> dict:
    if len({name for name, _ in pairs}) != len(pairs):
        raise ValueError("a name comes twice in the header")
    return dict(pairs)


def _read_safetensors(path, f, check, only=None) -> dict:
    """The arrays of a safetensors file (8 bytes: the header's length; a JSON header: name -> dtype,
    shape, offsets in the data; the data), read without the safetensors package."""
    size = os.fstat(f.fileno()).st_size
    if size < 8:
        raise _unreadable(path, f"{size} bytes, too short for a safetensors file")
    length = int.from_bytes(f.read(8), "little")
    if not 2 <= length <= size - 8:
        raise _unreadable(path, f"safetensors header of {length} bytes in a file of {size}")
    try:
        header = json.loads(f.read(length), object_pairs_hook=_unique_names)
    except (ValueError, RecursionError) as error:
        raise _unreadable(path, f"the safetensors header is not valid JSON: {error}") from None
    if not isinstance(header, dict):
        raise _unreadable(path, "the safetensors header is not a JSON object")
    texts = header.pop("__metadata__", None) or {}
    model_text = texts.get(MODEL_KEY) if isinstance(texts, dict) else None
    available, entries = size - 8 - length, {}
    for name, entry in header.items():
        try:
            dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]])
            shape, (begin, end) = tuple(entry["shape"]), entry["data_offsets"]
            valid = all(type(n) is int and n >= 0 for n in (*shape, begin, end))
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid:
            raise _unreadable(path, f"array {name!r} has a malformed or unsupported entry {str(entry):.100}")
        nbytes = math.prod(shape) * dtype.itemsize
        if end - begin != nbytes or not begin <= end <= available:
            raise _unreadable(path, f"array {name!r} declares shape {shape} of {dtype}, {nbytes} bytes, "
                                    f"at bytes {begin} to {end} of {available}")  # fmt: skip
        entries[name] = (shape, dtype, begin)
    headers = {name: (shape, dtype) for name, (shape, dtype, _) in entries.items()}
    if isinstance(model_text, str):  # as a .npz holds it: one string array
        headers[MODEL_KEY] = ((), np.dtype(f"<U{max(len(model_text), 1)}"))
    if check is not None:
        check(headers)
    arrays = {MODEL_KEY: np.array(model_text)} if MODEL_KEY in headers and (only is None or MODEL_KEY in only) else {}
    for name, (shape, dtype, begin) in entries.items():
        if only is not None and name not in only:
            continue
        f.seek(8 + length + begin)
        data = bytearray(math.prod(shape) * dtype.itemsize)
        if f.readinto(data) != len(data):
            raise _unreadable(path, f"array {name!r} is truncated")
        arrays[name] = np.frombuffer(data, dtype).reshape(shape)
    return arrays


def save_weights(model, path) -> None:
    """Write the model's parameters (by dotted name) to `path` (.npz or .safetensors)."""
    _save_arrays(path, {name: to_numpy(a) for name, a in model.state_dict().items()})


def load_weights(model, path) -> None:
    """Read parameters written by `save_weights` (or `save_model`) into `model`. The names, shapes
    and dtypes (floating point) in the file's headers must match the model's before any array is
    read, and no parameter changes unless all of them load."""
    arrays = _load_arrays(path, lambda headers: _check_weights(path, model, headers))
    arrays.pop(MODEL_KEY, None)
    model.load_state_dict(arrays)


MODEL_KEY = "__backprop_model__"  # a model file's architecture: JSON beside the weights
MODEL_VERSION = 1


def save_model(model, path, loss: str | None = None) -> None:
    """Write the model's architecture and weights to one file (.npz or .safetensors, never pickle),
    so `load_model(path)` rebuilds it without its code; `loss` (a name from bp.losses.LOSSES) is
    remembered for `backprop evaluate`. A layer that cannot describe itself is refused, naming it,
    before anything is written.

    >>> import os, tempfile, backprop as bp
    >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
    >>> bp.io.save_model(bp.nn.mlp([4, 3, 2], "relu"), path, loss="cross_entropy")
    >>> bp.io.load_model(path)
    Sequential(Linear(4, 3, bias=True), ReLU(), Linear(3, 2, bias=True))
    """
    from backprop.architecture import describe
    from backprop.losses import LOSSES

    if loss is not None and loss not in LOSSES:
        raise ConfigError(f"save_model: unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    meta = {"format": "backprop model", "version": MODEL_VERSION, "architecture": describe(model), "loss": loss}
    arrays = {name: to_numpy(a) for name, a in model.state_dict().items()}
    _save_arrays(path, {**arrays, MODEL_KEY: np.array(json.dumps(meta))})


def load_model(path, custom_layers=()):
    """The model `save_model` wrote to `path`, on the current backend, with its weights; its loss
    name is `model_info(path)["loss"]`. The file is checked whole (architecture, then every weight's
    name, shape and dtype) before a model is returned; layer classes of your own that define
    `config()` are passed as `custom_layers`."""
    from backprop.architecture import build

    meta, headers = _model_meta(path)
    weights = {name: (shape, dtype.name) for name, (shape, dtype) in headers.items() if dtype.kind == "f"}
    try:
        model = build(meta["architecture"], weights, custom_layers)
    except ConfigError as error:
        raise FileFormatError(f"{path}: {error}") from None
    load_weights(model, path)
    return model


def model_info(path) -> dict:
    """What a model file says of itself ({"architecture", "loss", ...}), read without its weights."""
    return _model_meta(path)[0]


def _model_meta(path) -> tuple[dict, dict]:
    headers: dict = {}

    def check(found):
        headers.update(found)
        shape, dtype = found.get(MODEL_KEY, ((), None))
        if dtype is None:
            raise FileFormatError(
                f"{path}: holds weights but no architecture (written by save_weights?): build the model "
                "in code and use load_weights"
            )
        if not _is_text((shape, dtype)):
            raise FileFormatError(f"{path}: its architecture of {str(dtype):.60} {shape} is not one bounded string")

    from backprop.losses import LOSSES

    text = str(_load_arrays(path, check, only=(MODEL_KEY,))[MODEL_KEY])
    try:
        meta = json.loads(text)
        valid = meta.get("format") == "backprop model" and isinstance(meta.get("architecture"), dict)
        valid = valid and (meta.get("loss") is None or meta["loss"] in LOSSES)
    except (ValueError, AttributeError, RecursionError, TypeError):
        valid = False
    if not valid:
        raise FileFormatError(f"{path}: not a readable backprop model (its architecture is malformed)")
    if meta.get("version") != MODEL_VERSION:
        raise FileFormatError(
            f"{path}: a backprop model file of version {meta.get('version')!r}; this backprop reads version "
            f"{MODEL_VERSION} (a newer backprop wrote it?)"
        )
    headers.pop(MODEL_KEY)
    return meta, headers


def _check_weights(path, model, headers: dict) -> None:
    """Refuse weights whose {name: (shape, dtype)} do not fit `model` (a shared parameter may come
    under any of its names); a model file's architecture entry is not a weight."""
    model_text = headers.get(MODEL_KEY)
    if model_text is not None and not _is_text(model_text):
        raise FileFormatError(f"{path}: array {MODEL_KEY!r} of {str(model_text[1]):.60} {model_text[0]} is no model")
    headers = {name: header for name, header in headers.items() if name != MODEL_KEY}
    params = dict(model._parameter_paths())
    for name, (shape, dtype) in headers.items():
        if dtype.kind != "f":
            raise FileFormatError(f"{path}: array {name!r} has dtype {str(dtype):.60}; weights are floating point")
        if name in params and shape != params[name].shape:
            raise FileFormatError(
                f"{path}: parameter {name!r}: state dict has shape {shape}, model has {params[name].shape}"
            )
    given = {id(params[name]) for name in headers if name in params}
    missing = [name for name, p in model.named_parameters() if id(p) not in given]
    unexpected = sorted(headers.keys() - params.keys())
    if missing or unexpected:
        raise FileFormatError(
            f"{path}: weights do not match {type(model).__name__}: missing {missing}, unexpected {unexpected}"
        )


def save_checkpoint(path, model, optimizer, epoch: int, history=None, callbacks=(), world_size: int = 1) -> None:
    """Model, optimizer state, epoch, random state, history and the state of every callback that
    has one (`state_dict()`: numbers, strings and NumPy arrays by name) in one .npz, written
    atomically; `world_size`: the processes of a data-parallel run (backprop.distributed)."""
    arrays = {f"model/{name}": to_numpy(a) for name, a in model.state_dict().items()}
    opt = optimizer.state_dict()
    for i, state in enumerate(opt["state"]):
        arrays.update({f"optimizer/{i}/{key}": value for key, value in state.items()})
    kept = []
    for i, callback in enumerate(_with_state(callbacks)):
        values = {}
        for key, value in callback.state_dict().items():
            if isinstance(value, np.ndarray):
                arrays[f"callbacks/{i}/{key}"] = value
            else:
                values[key] = value
        kept.append({"type": type(callback).__name__, "values": values})
    meta = {
        "epoch": epoch,
        "optimizer": {"type": type(optimizer).__name__, "hyper": opt["hyper"], "count": len(opt["state"])},
        "rng_state": get_rng_state(),
        "history": history.epochs if history is not None else [],
        "callbacks": kept,
        "world_size": world_size,
    }
    arrays["meta"] = np.array(json.dumps(meta))
    check_checkpoint_path(path)
    _save_arrays(path, arrays)


def _with_state(callbacks) -> list:
    return [callback for callback in callbacks if hasattr(callback, "state_dict")]


def _metadata(path, meta) -> dict:
    """A checkpoint's metadata, with every field that loading reads present and of its type."""
    try:
        meta = json.loads(str(meta))
        optimizer, callbacks, history = meta["optimizer"], meta.get("callbacks", []), meta["history"]
        fields = {
            "epoch": _is_count(meta["epoch"]),
            "optimizer type": isinstance(optimizer["type"], str),
            "optimizer hyper-parameters": isinstance(optimizer["hyper"], dict),
            "optimizer parameter count": _is_count(optimizer["count"]),
            "history": isinstance(history, list) and all(isinstance(record, dict) for record in history),
            "callbacks": isinstance(callbacks, list)
            and all(isinstance(e["type"], str) and isinstance(e["values"], dict) for e in callbacks),
            "random state": "rng_state" in meta,
        }
    except (ValueError, KeyError, TypeError, RecursionError) as error:  # not JSON, a field missing, not a dict
        raise FileFormatError(f"{path}: not a readable backprop checkpoint (metadata: {error!r:.200})") from None
    bad = [field for field, valid in fields.items() if not valid]
    if bad:
        raise FileFormatError(f"{path}: not a readable backprop checkpoint (metadata: a malformed {bad[0]})")
    return meta


def _is_count(value) -> bool:
    return type(value) is int and value >= 0


def checkpoint_metadata(path) -> dict:
    """What the checkpoint at `path` says of itself (epoch, history, optimizer type, ...), read
    without reading its arrays."""

    def check(headers):
        shape, dtype = headers.get("meta", ((), None))
        if dtype is None:
            raise FileFormatError(f"{path}: not a backprop checkpoint (no metadata)")
        if not _is_text((shape, dtype)):
            raise FileFormatError(f"{path}: metadata of {str(dtype):.60} {shape} is not one string of at most 64 MiB")

    return _metadata(path, _load_arrays(path, check, only=("meta",))["meta"])


def load_checkpoint(path, model, optimizer, callbacks=()) -> dict:
    """Restore what `save_checkpoint` wrote (and the state of the same callbacks); returns its
    metadata (epoch, history, ...). Everything is checked before anything changes: a checkpoint
    that does not fit leaves the model, optimizer, callbacks and random state as they were."""
    arrays = _load_arrays(path, lambda headers: _check_checkpoint_headers(path, model, optimizer, headers))
    meta = _metadata(path, arrays["meta"])
    if meta["optimizer"]["type"] != type(optimizer).__name__:
        raise FileFormatError(
            f"{path}: checkpoint holds {a(meta['optimizer']['type'])} state, not {a(type(optimizer).__name__)}"
        )
    if meta["optimizer"]["count"] != len(optimizer.params):
        raise FileFormatError(
            f"{path}: does not fit this training run: it holds optimizer state for {meta['optimizer']['count']} "
            f"parameters, {type(optimizer).__name__} has {len(optimizer.params)}"
        )
    states = [{} for _ in optimizer.params]
    for key, value in arrays.items():
        if key.startswith("optimizer/"):
            _, i, name = key.split("/", 2)
            if not i.isdigit() or int(i) >= len(states):
                raise FileFormatError(f"{path}: optimizer state {key!r} for none of its {len(states)} parameters")
            states[int(i)][name] = value
    model_state = {k.removeprefix("model/"): v for k, v in arrays.items() if k.startswith("model/")}
    try:
        weights = model.check_state_dict(model_state)
        optimizer_state = optimizer.check_state_dict({"hyper": meta["optimizer"]["hyper"], "state": states})
        callback_states = _check_callbacks(path, arrays, meta.get("callbacks"), _with_state(callbacks), model)
    except UserError as error:
        raise FileFormatError(f"{path}: does not fit this training run: {error}") from None
    try:
        np.random.PCG64().state = meta["rng_state"]  # a random state this generator accepts
    except (ValueError, TypeError, KeyError, OverflowError) as error:
        raise FileFormatError(f"{path}: holds a random state that cannot be restored ({error!r:.200})") from None
    for callback, state in callback_states:  # first: a user's callback may check nothing before it loads
        callback.load_state_dict(state)
    model.apply_state(weights)
    optimizer.apply_state(optimizer_state)
    set_rng_state(meta["rng_state"])
    return meta


MAX_METADATA_BYTES = 64 << 20  # a checkpoint's JSON: about 300,000 epochs of history


def _is_text(header: tuple) -> bool:
    """Whether a (shape, dtype) header is one string of at most MAX_METADATA_BYTES: a file's JSON."""
    shape, dtype = header
    return shape == () and dtype.kind == "U" and dtype.itemsize <= MAX_METADATA_BYTES


def _check_checkpoint_headers(path, model, optimizer, headers: dict) -> None:
    """Refuse, from the headers alone (before any array is read), a checkpoint whose arrays cannot
    fit: the model's weights as in `load_weights`, floating optimizer state of its parameter's
    shape, callback arrays no larger than the model, and metadata of one string of bounded size."""
    if "meta" not in headers:
        raise FileFormatError(f"{path}: not a backprop checkpoint (no metadata)")
    _check_weights(path, model, {k.removeprefix("model/"): v for k, v in headers.items() if k.startswith("model/")})
    model_size = sum(math.prod(p.shape) for p in model.parameters())
    for name, (shape, dtype) in headers.items():
        group, _, rest = name.partition("/")
        if group == "optimizer":
            _check_state_header(path, optimizer, rest, shape, dtype)
        elif group == "model" or (group == "callbacks" and dtype.kind in "biuf" and math.prod(shape) <= model_size):
            continue  # the model's arrays were checked above; a callback keeps at most a copy of the model
        elif not (name == "meta" and _is_text((shape, dtype))):
            raise FileFormatError(f"{path}: array {name!r} of {str(dtype):.60} {shape} has no place in a checkpoint")


def _check_state_header(path, optimizer, key: str, shape: tuple, dtype) -> None:
    index, _, name = key.partition("/")
    params, kind = optimizer.params, type(optimizer).__name__
    if not index.isdigit() or int(index) >= len(params) or not name:
        raise FileFormatError(f"{path}: optimizer state 'optimizer/{key}' for none of its {len(params)} parameters")
    expected = params[int(index)].shape
    if shape != expected or dtype.kind != "f":
        raise FileFormatError(
            f"{path}: does not fit this training run: {kind} state {name!r} of parameter {index} is "
            f"{str(dtype):.60} {shape}, not a floating array of its shape {expected}"
        )


def _check_callbacks(path, arrays: dict, saved: list | None, callbacks: list, model) -> list:
    """(callback, state) pairs for the callbacks with state, which must be the saved ones, in order.
    A checkpoint from before callbacks were saved (no entry) restores none, with a warning."""
    if saved is None:
        if callbacks:
            warnings.warn(f"{path} holds no callback state (an older checkpoint): "
                          f"{', '.join(type(c).__name__ for c in callbacks)} start afresh", stacklevel=4)  # fmt: skip
        return []
    names = [type(callback).__name__ for callback in callbacks]
    if [entry["type"] for entry in saved] != names:
        raise ConfigError(f"it holds the state of callbacks {[e['type'] for e in saved]}, this run has {names}")
    strays = [k for k in arrays if k.startswith("callbacks/") and not _callback_index(k, len(saved))]
    if strays:
        raise ConfigError(f"array {strays[0]!r} belongs to none of its {len(saved)} callbacks")
    pairs = []
    for i, (callback, entry) in enumerate(zip(callbacks, saved, strict=True)):
        prefix = f"callbacks/{i}/"
        state = {**entry["values"], **{k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}}
        check = getattr(callback, "check_state_dict", None)
        pairs.append((callback, state if check is None else check(state, model)))
    return pairs


def _callback_index(key: str, count: int) -> bool:
    index = key.split("/")[1]
    return index.isdigit() and int(index) < count
