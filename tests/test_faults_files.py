"""Faults in files (issue 9): nothing silently wrong, no traceback, nothing lost or left behind.

Weight files of the wrong dtype or lying headers, memory bombs (gzip, .npz, pickle), unreadable
files as one line, and atomic writes that survive kill -9, keep permissions and follow symlinks.
Memory bombs are small files that would make big allocations: tracemalloc measures the peak.
"""

import contextlib
import gzip
import io
import os
import pickle
import stat
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_downloads import serving  # a local HTTPS mirror

import backprop as bp
from backprop.data import DataError, IDXError, read_idx, sources
from backprop.data.idx import parse_idx
from backprop.files import atomic_write
from backprop.io import FileFormatError

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20
posix_only = pytest.mark.skipif(os.name == "nt", reason="kill -9, file modes and symlinks are POSIX")


def _model(seed=0):
    bp.manual_seed(seed)
    return bp.nn.mlp([2, 3, 2], "tanh", dtype="float64")


def _values(model):
    return [p.numpy().copy() for p in model.parameters()]


def _unchanged(model, before):
    return all(np.array_equal(a, b.numpy()) for a, b in zip(before, model.parameters(), strict=True))


def _peak(function) -> tuple[BaseException | None, int]:
    """(what `function()` raised, the peak of memory it allocated meanwhile)."""
    tracemalloc.start()
    try:
        function()
        raised = None
    except Exception as error:
        raised = error
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return raised, peak


def _npy_header(shape, descr="<f8") -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
    return out.getvalue()


def _npy(array) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, array)
    return out.getvalue()


def _zip(path, members: dict) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _safetensors(entries: dict, data: bytes = b"") -> bytes:
    """A safetensors file by hand: header length, JSON header (`entries` as given), data."""
    import json

    header = json.dumps(entries).encode()
    return len(header).to_bytes(8, "little") + header + data


# --- weights: dtypes, lying headers, unreadable files -------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["int64", "bool", "complex128", "<U3", [("a", "<f4"), ("b", "<f4")]])
def test_weights_that_are_not_floating_point_are_refused_naming_the_file_and_array(tmp_path, dtype):
    model = _model()
    before = _values(model)
    arrays = {name: bp.to_numpy(a) for name, a in _model(1).state_dict().items()}
    arrays["0.weight"] = np.ones(arrays["0.weight"].shape, dtype)
    np.savez(tmp_path / "w.npz", **arrays)
    with pytest.raises(FileFormatError, match=r"w.npz: array '0.weight' has dtype .*; weights are floating point"):
        bp.io.load_weights(model, tmp_path / "w.npz")
    assert _unchanged(model, before)


def test_safetensors_weights_that_are_not_floating_point_are_refused(tmp_path):
    model = _model()
    before = _values(model)
    entries, data = {}, b""
    for name, a in model.state_dict().items():
        a = bp.to_numpy(a).astype("<i8" if name == "2.bias" else "<f8")
        entries[name] = {"dtype": "I64" if name == "2.bias" else "F64", "shape": list(a.shape),
                         "data_offsets": [len(data), len(data) + a.nbytes]}  # fmt: skip
        data += a.tobytes()
    (tmp_path / "w.safetensors").write_bytes(_safetensors(entries, data))
    with pytest.raises(FileFormatError, match=r"w.safetensors: array '2.bias' has dtype int64"):
        bp.io.load_weights(model, tmp_path / "w.safetensors")
    assert _unchanged(model, before)


def test_safetensors_weights_load_without_the_safetensors_package(tmp_path, monkeypatch):
    pytest.importorskip("safetensors")
    model, other = _model(0), _model(1)
    bp.io.save_weights(model, tmp_path / "w.safetensors")
    monkeypatch.setitem(sys.modules, "safetensors", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    bp.io.load_weights(other, tmp_path / "w.safetensors")
    assert _unchanged(other, _values(model))


def test_a_small_npz_holding_a_huge_parameter_fails_before_reading_it(tmp_path):
    model = bp.nn.Linear(4, 8)  # weight (4, 8)
    before = _values(model)
    path = tmp_path / "w.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("weight.npy", "w") as member:  # 128 MiB of zeros, deflated to about 128 KiB
            member.write(_npy_header((2**24,)))
            for _ in range(128):
                member.write(bytes(MiB))
        archive.writestr("bias.npy", _npy(np.zeros(8)))
    assert path.stat().st_size < MiB
    raised, peak = _peak(lambda: bp.io.load_weights(model, path))
    assert peak < 16 * MiB
    assert isinstance(raised, FileFormatError), raised
    assert str(raised) == f"{path}: parameter 'weight': state dict has shape (16777216,), model has (4, 8)"
    assert _unchanged(model, before)


@pytest.mark.parametrize("key", ["model/0.weight", "optimizer/0/velocity", "optimizer/7/velocity", "extra"])
def test_a_small_checkpoint_holding_a_huge_array_fails_before_reading_it(tmp_path, key):
    model = _model()
    optimizer = bp.optim.SGD(model.parameters(), 0.1, momentum=0.9)
    path = tmp_path / "run.npz"
    bp.io.save_checkpoint(tmp_path / "good.npz", model, optimizer, 1, bp.History())
    with zipfile.ZipFile(tmp_path / "good.npz") as good, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in good.namelist():
            if name != f"{key}.npy":
                archive.writestr(name, good.read(name))
        with archive.open(f"{key}.npy", "w") as member:  # 128 MiB of zeros, deflated to about 128 KiB
            member.write(_npy_header((2**24,)))
            for _ in range(128):
                member.write(bytes(MiB))
    before = _values(model)
    raised, peak = _peak(lambda: bp.io.load_checkpoint(path, model, optimizer))
    assert peak < 16 * MiB
    assert isinstance(raised, FileFormatError), raised
    assert str(raised).startswith(f"{path}: ") and ("16777216" in str(raised) or "none of its" in str(raised))
    assert _unchanged(model, before)


def _patch_zip_size(path: Path, size: int) -> None:
    """Make the zip's directory (and local header) claim `size` uncompressed bytes for its member."""
    data = bytearray(path.read_bytes())
    data[22:26] = size.to_bytes(4, "little")  # the local file header at 0
    central = data.index(b"PK\x01\x02")
    data[central + 24 : central + 28] = size.to_bytes(4, "little")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("lie", ["in the .npy header", "in the zip directory"])
def test_an_npz_member_claiming_more_bytes_than_it_holds_is_refused_before_reading(tmp_path, lie):
    """Any .npz (a checkpoint here, whose arrays the loader cannot know in advance)."""
    header = _npy_header((2**27,), "|u1")  # 128 MiB of uint8
    path = _zip(tmp_path / "run.npz", {"meta.npy": header + bytes(16)})
    if lie == "in the zip directory":
        _patch_zip_size(path, len(header) + 2**27)  # consistent with the .npy header, not with the stored bytes
    model = _model()
    raised, peak = _peak(lambda: bp.io.load_checkpoint(path, model, bp.optim.SGD(model.parameters(), 0.1)))
    assert peak < 16 * MiB
    assert isinstance(raised, FileFormatError), raised
    assert str(raised).startswith(f"{path}: not a readable weights file (")


def _unreadable_files():
    valid_header = {"w": {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]}}
    return {
        "empty.npz": b"",
        "array.npz": _npy(np.zeros(3)),  # a .npy named .npz
        "truncated.safetensors": b"\x10\x00\x00",
        "huge-header.safetensors": (2**63).to_bytes(8, "little") + b"{}",
        "no-header.safetensors": bytes(8),
        "not-json.safetensors": (8).to_bytes(8, "little") + b"not json",
        "short-data.safetensors": _safetensors(valid_header, bytes(8)),
    }


@pytest.mark.parametrize("name", list(_unreadable_files()))
def test_an_unreadable_weights_file_is_one_line_naming_it(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(_unreadable_files()[name])
    model = _model()
    before = _values(model)
    with pytest.raises(FileFormatError) as raised:
        bp.io.load_weights(model, path)
    assert str(raised.value).startswith(f"{path}: not a readable weights file (") and "\n" not in str(raised.value)
    assert _unchanged(model, before)


# --- atomic writes: kill -9, permissions, symlinks, syncing ------------------------------------------------------

_SLOW_WRITER = """
import sys, time
from backprop.files import atomic_write

def write(f):
    f.write(bytes(1 << 20))
    f.flush()
    print("writing", flush=True)
    time.sleep(120)

atomic_write(sys.argv[1], write)
"""


def _start_writer(target: Path) -> subprocess.Popen:
    """A process in the middle of writing `target` (it has written 1 MiB and waits)."""
    process = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(target)], cwd=ROOT, stdout=subprocess.PIPE,
                               text=True)  # fmt: skip
    assert process.stdout.readline() == "writing\n"
    return process


def _partials(folder: Path) -> set:
    return {p.name for p in folder.iterdir() if p.name.endswith(".part")}


@posix_only
def test_the_temporary_file_of_a_writer_killed_mid_write_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "w.npz"
    killed = _start_writer(target)
    killed_partials = _partials(tmp_path)
    alive = _start_writer(target)
    try:
        alive_partials = _partials(tmp_path) - killed_partials
        killed.kill()  # SIGKILL: no cleanup runs
        killed.wait()
        assert len(killed_partials) == len(alive_partials) == 1
        atomic_write(target, lambda f: f.write(b"new"))
        assert _partials(tmp_path) == alive_partials and alive.poll() is None  # a live writer's file stays
        assert target.read_bytes() == b"new"
    finally:
        alive.kill()
        alive.wait()
    atomic_write(target, lambda f: f.write(b"newer"))
    assert _partials(tmp_path) == set() and target.read_bytes() == b"newer"


@posix_only
def test_a_resave_keeps_the_files_permissions(tmp_path):
    path = tmp_path / "w.npz"
    previous = os.umask(0o022)
    try:
        bp.io.save_weights(_model(), path)
        path.chmod(0o640)
        bp.io.save_weights(_model(1), path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


@posix_only
def test_saving_through_a_symlink_writes_its_target_and_keeps_the_link(tmp_path):
    (tmp_path / "store").mkdir()
    real, link = tmp_path / "store" / "w.npz", tmp_path / "w.npz"
    link.symlink_to(real)
    bp.io.save_weights(_model(0), link)  # the target does not exist yet
    saved = _model(1)
    bp.io.save_weights(saved, link)  # and now it does
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert {p.name for p in (tmp_path / "store").iterdir()} == {"w.npz"}
    loaded = _model(2)
    bp.io.load_weights(loaded, real)
    assert _unchanged(loaded, _values(saved))


def test_the_file_is_synced_before_its_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace

    def record_fsync(fd):
        events.append("sync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "sync file")
        fsync(fd)

    def record_replace(source, target):
        events.append("rename")
        replace(source, target)

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    atomic_write(tmp_path / "f.bin", lambda f: f.write(b"data"))
    assert events == ["sync file", "rename", "sync folder"] and (tmp_path / "f.bin").read_bytes() == b"data"


# --- dataset files: gzip bombs, IDX headers ----------------------------------------------------------------------


def _idx_header(*shape) -> bytes:
    return bytes([0, 0, 8, len(shape)]) + np.array(shape, ">u4").tobytes()


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """32 MiB of IDX labels (all zeros) in about 32 KiB of gzip."""
    return gzip.compress(_idx_header(32 * MiB) + bytes(32 * MiB), compresslevel=9)


@pytest.mark.parametrize("where", ["in the data folder", "downloaded"])
def test_a_gzip_bomb_fails_its_checksum_without_being_decompressed_into_memory(tmp_path, monkeypatch, gzip_bomb, where):
    monkeypatch.delenv("BACKPROP_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    name = "t10k-labels-idx1-ubyte.gz"
    folder = tmp_path / ("mirror" if where == "downloaded" else "mnist")
    folder.mkdir()
    (folder / name).write_bytes(gzip_bomb)
    checksum = bp.data.mnist_checksums["mnist"][name]
    with serving(folder, monkeypatch) if where == "downloaded" else contextlib.nullcontext() as mirror:
        mirrors = [mirror] if mirror else []
        raised, peak = _peak(lambda: sources.fetch("mnist", name, checksum, mirrors, data_dir=tmp_path))
    assert isinstance(raised, DataError) and "checksum mismatch" in str(raised), raised
    assert peak < 8 * MiB


def test_read_idx_reads_no_further_than_its_header_says(tmp_path):
    path = tmp_path / "labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_header(4) + bytes(4 + 32 * MiB)))  # 32 MiB more than the header says
    raised, peak = _peak(lambda: read_idx(path))
    assert peak < 8 * MiB
    assert isinstance(raised, IDXError), raised
    assert str(raised) == f"{path}: header says shape (4,) (4 bytes of data), but the file holds more"


@pytest.mark.parametrize("reader", [read_idx, lambda path: parse_idx(path.read_bytes(), str(path))])
def test_an_idx_shape_whose_size_overflows_int64_is_an_error_naming_the_file(tmp_path, reader):
    path = tmp_path / "big-idx4-ubyte"
    path.write_bytes(_idx_header(65536, 65536, 65536, 65536))  # 2**64 elements: wraps to 0 in int64
    with pytest.raises(IDXError, match=r"big-idx4-ubyte: header says shape \(65536, 65536, 65536, 65536\)"):
        reader(path)


# --- Nielsen's pickle: bounded, and its structure checked --------------------------------------------------------


class _Call:
    """Pickles as a call of `function(*args)`: what a hostile pickle can ask for."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _nielsen(path: Path, data) -> Path:
    with gzip.open(path, "wb") as f:
        pickle.dump(data, f, protocol=2)
    return path


def _good_pair(n=2):
    return np.zeros((n, 784), np.float32), np.arange(n)


@pytest.mark.parametrize(
    "call",
    [
        _Call(np.ndarray, (2**43,)),  # 64 TiB
        _Call(np._core.multiarray._reconstruct, np.ndarray, (2**46,), b"b"),
    ],
    ids=["ndarray", "_reconstruct"],
)
def test_nielsen_pickle_allocates_no_array_but_the_data_it_holds(tmp_path, call):
    path = _nielsen(tmp_path / "mnist.pkl.gz", ((call, np.arange(3)), _good_pair(), _good_pair()))
    with pytest.raises(DataError, match=r"mnist.pkl.gz: cannot load as Nielsen's mnist.pkl.gz: refusing"):
        bp.data.nielsen_pickle(path)


def test_nielsen_pickle_builds_nothing_big_from_a_small_file(tmp_path):
    one = np.zeros(1)
    path = _nielsen(tmp_path / "mnist.pkl.gz", [one] * 10_000_000)  # 20 MB of references to one array: 80 MB of list
    assert path.stat().st_size < 256 * 1024
    raised, peak = _peak(lambda: bp.data.nielsen_pickle(path))
    assert peak < 8 * MiB
    assert isinstance(raised, DataError) and "cannot load as Nielsen's mnist.pkl.gz" in str(raised), raised


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (np.zeros((3, 784), np.float32), np.arange(2), r"training labels are int64 of shape \(2,\), not 3 integers"),
        (np.zeros((3, 784), np.float32), np.array([0, -1, 1]), "training labels run from -1 to 1, not within 0 to 9"),
        (np.zeros((3, 784), np.float32), np.array([0, 42, 1]), "training labels run from 0 to 42, not within 0 to 9"),
        (np.zeros((3, 784), np.float32), np.array([7.9, 1, 2]), "training labels are float64"),
        (np.zeros((3, 783), np.float32), np.arange(3), r"training images are float32 of shape \(3, 783\)"),
    ],
)
def test_nielsen_pickle_checks_its_images_and_labels(tmp_path, images, labels, message):
    path = _nielsen(tmp_path / "mnist.pkl.gz", ((images, labels), _good_pair(), _good_pair()))
    with pytest.raises(DataError, match=f"mnist.pkl.gz: {message}"):
        bp.data.nielsen_pickle(path)


def test_an_npy_header_claiming_megabytes_is_refused_before_it_is_read(tmp_path):
    header = b"\x93NUMPY\x02\x00" + (50 * MiB).to_bytes(4, "little") + b" " * (50 * MiB)  # 50 MiB of spaces
    path = tmp_path / "w.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("weight.npy", header)
    assert path.stat().st_size < MiB
    raised, peak = _peak(lambda: bp.io.load_weights(bp.nn.Linear(4, 8), path))
    assert peak < 16 * MiB
    assert isinstance(raised, FileFormatError) and "has a header of 52428800 bytes" in str(raised), raised


def test_weights_of_the_same_rank_but_another_shape_are_refused(tmp_path):
    bp.manual_seed(0)
    bp.io.save_weights(bp.nn.Linear(3, 5), tmp_path / "w.npz")
    other = bp.nn.Linear(5, 3)  # weight (5, 3) against a saved (3, 5): same rank, other shape
    before = _values(other)
    with pytest.raises(FileFormatError, match=r"parameter '(weight|bias)': state dict has shape"):
        bp.io.load_weights(other, tmp_path / "w.npz")
    assert _unchanged(other, before)


def test_an_npz_member_holding_more_bytes_than_its_header_declares_is_refused(tmp_path):
    model = bp.nn.Linear(4, 8)
    members = {"weight.npy": _npy(np.zeros((4, 8))) + bytes(64), "bias.npy": _npy(np.zeros(8))}
    path = _zip(tmp_path / "w.npz", members)
    with pytest.raises(FileFormatError, match=r"array 'weight' declares shape \(4, 8\).*but holds 320"):
        bp.io.load_weights(model, path)
