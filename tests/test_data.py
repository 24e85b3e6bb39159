"""Data: the IDX parser, finding files (downloads: test_downloads.py), MNIST, Nielsen's pickle, small sets, batches."""

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

import backprop as bp
from backprop.data import DataError, IDXError, read_idx, sources

DATA_DIR = os.environ.get("BACKPROP_DATA_DIR")
needs_mnist = pytest.mark.skipif(
    not DATA_DIR or not Path(DATA_DIR, "mnist").is_dir(), reason="real MNIST not found in $BACKPROP_DATA_DIR"
)


def _idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("dtype, code", [(np.uint8, 0x08), (np.int16, 0x0B), (np.int32, 0x0C), (np.float64, 0x0E)])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, dtype, code, compress):
    array = (np.arange(24).reshape(2, 3, 4) * 7 % 101).astype(dtype)
    raw = _idx_bytes(array, code)
    path = tmp_path / "a-idx3"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    got = read_idx(path)
    np.testing.assert_array_equal(got, array, strict=True)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00\x01\x08\x01\x00\x00\x00\x02\x05\x06", "bad magic number"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x02\x05\x06", "unknown IDX type code 0x07"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated header"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x02\x00\x00\x00\x03" + bytes(5), r"header says shape \(2, 3\) \(6 bytes"),
    ],
)
def test_corrupt_idx_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(IDXError, match=f"broken-idx1-ubyte.*{message}"):
        read_idx(path)


def test_truncated_gzip_names_the_file(tmp_path):
    path = tmp_path / "cut-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_bytes(np.arange(100, dtype=np.uint8), 8))[:30])
    with pytest.raises(IDXError, match="cut-idx1-ubyte.gz: corrupt or truncated gzip data"):
        read_idx(path)


def test_a_missing_file_without_download_says_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("BACKPROP_DATA_DIR", raising=False)
    with pytest.raises(DataError, match=r"^toy/f.gz not found in \$BACKPROP_DATA_DIR or .*cache/backprop$"):
        sources.fetch("toy", "f.gz", "0" * 32, ["https://127.0.0.1:9/"], download=False)


def test_a_corrupt_local_file_is_a_checksum_error(tmp_path, monkeypatch):
    monkeypatch.delenv("BACKPROP_DATA_DIR", raising=False)
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + bytes(8)))
    checksum = bp.data.mnist_checksums["mnist"]["t10k-labels-idx1-ubyte.gz"]
    with pytest.raises(DataError, match=r"mnist/t10k-labels-idx1-ubyte.gz: checksum mismatch"):
        sources.fetch("mnist", "t10k-labels-idx1-ubyte.gz", checksum, [], data_dir=tmp_path, download=False)


@needs_mnist
def test_real_mnist_and_fashion_mnist():
    x, y = bp.data.mnist("test")
    assert x.shape == (10000, 784) and x.dtype == np.float32 and 0 <= x.min() and x.max() == 1.0
    assert np.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    x, y = bp.data.fashion_mnist("test")
    assert x.shape == (10000, 784) and np.bincount(y).tolist() == [1000] * 10


def test_nielsen_pickle_loads_arrays_and_refuses_code(tmp_path):
    parts = tuple((np.full((3, 784), i, np.float32), np.arange(3) + i) for i in range(3))
    good = tmp_path / "mnist.pkl.gz"
    with gzip.open(good, "wb") as f:
        pickle.dump(parts, f, protocol=2)
    loaded = bp.data.nielsen_pickle(good)
    assert [x.shape for x, _ in loaded] == [(3, 784)] * 3 and loaded[2][1].tolist() == [2, 3, 4]

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pkl.gz"
    with gzip.open(evil, "wb") as f:
        pickle.dump((Evil(),), f)
    with pytest.raises(DataError, match="refusing to load posix.system"):
        bp.data.nielsen_pickle(evil)


def test_bundled_digits_and_spirals():
    (x, y), (xt, yt) = bp.data.digits("train"), bp.data.digits("test")
    assert x.shape == (1437, 64) and xt.shape == (360, 64) and x.max() == 1.0
    assert set(np.unique(y)) == set(np.unique(yt)) == set(range(10))
    points, labels = bp.data.spirals(150)
    assert points.shape == (300, 2) and labels.sum() == 150


def test_batches_shuffle_indices_reproducibly(backend):
    x, y = np.arange(20.0).reshape(10, 2), np.arange(10)
    bp.manual_seed(5)
    first = [bp.to_numpy(b) for _, b in bp.data.Batches(x, y, 3)]
    bp.manual_seed(5)
    second = [bp.to_numpy(b) for _, b in bp.data.Batches(x, y, 3)]
    assert [a.tolist() for a in first] == [b.tolist() for b in second]
    assert sorted(np.concatenate(first).tolist()) == list(range(10)) and [len(a) for a in first] == [3, 3, 3, 1]
    batches = bp.data.Batches(x, y, 3, drop_last=True)
    assert len(batches) == 3 and sum(t.shape[0] for _, t in batches) == 9
    for inputs, targets in batches:
        assert bp.to_numpy(inputs)[:, 0].tolist() == (2 * bp.to_numpy(targets)).tolist()
    with pytest.raises(ValueError, match="10 inputs but 9 targets"):
        bp.data.Batches(x, y[:9], 3)


@pytest.mark.parametrize("shuffle, drop_last, shard", [(True, False, (0, 1)), (False, False, (0, 1)),
                                                       (True, True, (1, 2)), (False, False, (2, 3))])  # fmt: skip
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_batches_in_groups_are_the_batches_of_an_epoch_in_order(backend, shuffle, drop_last, shard, k):
    x, y = np.arange(46.0).reshape(23, 2), np.arange(23)  # sample i: x (2i, 2i+1), label i
    batches = bp.data.Batches(x, y, 3, shuffle=shuffle, drop_last=drop_last, shard=shard)
    bp.manual_seed(4)
    expected = [(bp.to_numpy(a), bp.to_numpy(b)) for a, b in batches]
    next_draw = bp.backend.host_rng().integers(1 << 30)
    bp.manual_seed(4)
    got, groups = [], 0
    for inputs, targets, stacked in batches.groups(k):
        inputs, targets = bp.to_numpy(inputs), bp.to_numpy(targets)
        if stacked:
            assert inputs.shape[:2] == targets.shape[:2] == (k, 3)
            got += list(zip(inputs, targets, strict=True))
            groups += 1
        else:
            got.append((inputs, targets))
    assert bp.backend.host_rng().integers(1 << 30) == next_draw  # one permutation an epoch, as iterating
    assert len(got) == len(expected) == len(batches)
    for (gx, gy), (ex, ey) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(gx, ex, strict=True)
        np.testing.assert_array_equal(gy, ey, strict=True)
    assert groups == batches.n // 3 // k  # every whole group of full batches is stacked


@pytest.mark.parametrize("k, message", [(0, "got 0"), (-1, "got -1"), (2.0, r"got 2.0 \(float\)"), (True, "got True")])
def test_batches_groups_refuse_a_group_size_that_is_not_a_positive_integer(k, message):
    batches = bp.data.Batches(np.zeros((10, 3)), np.arange(10), batch_size=3)
    with pytest.raises(bp.errors.ConfigError, match=f"^k must be a positive integer, {message}"):
        next(batches.groups(k))


class _Negated(bp.data.Batches):
    """Batches with an augmentation of their own: every input negated."""

    def __iter__(self):
        for inputs, targets in super().__iter__():
            yield -inputs, targets


@pytest.mark.parametrize("k", [2, 3])
def test_groups_and_fit_follow_a_subclass_that_defines_its_own_batches(backend, k):
    x, y = np.arange(46.0).reshape(23, 2), np.arange(23) % 3
    batches = _Negated(x, y, 3, shuffle=True)
    bp.manual_seed(4)
    expected = [bp.to_numpy(a) for a, _ in batches]
    bp.manual_seed(4)
    got = []
    for inputs, _, stacked in batches.groups(k):
        got += list(bp.to_numpy(inputs)) if stacked else [bp.to_numpy(inputs)]
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e, strict=True)  # negated: the subclass's batches

    def fit(per_call):
        bp.manual_seed(0)
        model = bp.nn.mlp([2, 3], None, dtype="float64")
        history = bp.fit(model, "cross_entropy", bp.optim.SGD(model.parameters(), lr=0.01), _Negated(x, y, 3),
                         epochs=2, verbose=0, steps_per_execution=per_call)  # fmt: skip
        return history.epochs[-1]["loss"], [p.numpy() for p in model.parameters()]

    (loss, weights), (expected_loss, expected_weights) = fit(k), fit(1)
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    for got_w, want in zip(weights, expected_weights, strict=True):
        np.testing.assert_allclose(got_w, want, rtol=1e-12, atol=1e-14)
