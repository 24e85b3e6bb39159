"""Saving (atomic, no pickle), fit/evaluate/predict, early stopping, divergence, exact resume."""

import numpy as np
import pytest

import backprop as bp


def _spiral_model(seed=0):
    bp.manual_seed(seed)
    return bp.nn.mlp([2, 16, 16, 2], "tanh", dtype="float64")


def test_weights_round_trip_npz(tmp_path, backend):
    model, other = _spiral_model(0), _spiral_model(1)
    bp.io.save_weights(model, tmp_path / "w.npz")
    bp.io.load_weights(other, tmp_path / "w.npz")
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), strict=True)


def test_a_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    model = _spiral_model()
    path = tmp_path / "w.npz"
    bp.io.save_weights(model, path)
    good = path.read_bytes()

    def crash(f, **arrays):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        bp.io.save_weights(model, path)
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["w.npz"]


def test_bad_weight_files(tmp_path):
    model = _spiral_model()
    with pytest.raises(ValueError, match=r"w.pkl: weights are saved as .npz or .safetensors"):
        bp.io.save_weights(model, tmp_path / "w.pkl")
    with pytest.raises(FileNotFoundError, match="missing.npz: no such file"):
        bp.io.load_weights(model, tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz: not a readable weights file"):
        bp.io.load_weights(model, tmp_path / "junk.npz")
    bp.io.save_weights(bp.nn.mlp([2, 3, 16, 2]), tmp_path / "small.npz")
    with pytest.raises(ValueError, match=r"parameter '0.weight': state dict has shape \(2, 3\), model has \(2, 16\)"):
        bp.io.load_weights(model, tmp_path / "small.npz")


def test_fit_learns_spirals_and_reports_history(backend):
    model = _spiral_model()
    x, y = bp.data.spirals(100, turns=1.0)
    history = bp.fit(model, bp.losses.cross_entropy, bp.optim.Adam(model.parameters(), 0.03), (x.astype("float64"), y),
                     epochs=40, batch_size=25, validation=(x.astype("float64"), y), verbose=0)  # fmt: skip
    assert len(history) == 40 and history["epoch"] == list(range(1, 41))
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["val_accuracy"][-1] > 0.85
    result = bp.evaluate(model, bp.losses.cross_entropy, (x.astype("float64"), y))
    assert result["accuracy"] == pytest.approx(history["val_accuracy"][-1])
    assert tuple(bp.predict(model, x.astype("float64")).shape) == (200, 2)


def test_early_stopping_restores_the_best_weights():
    model = _spiral_model()
    x, y = bp.data.spirals(50)
    x = x.astype("float64")
    stopper = bp.EarlyStopping("val_loss", patience=2)
    history = bp.fit(model, bp.losses.cross_entropy, bp.optim.SGD(model.parameters(), lr=5.0), (x, y), epochs=50,
                     batch_size=100, validation=(x, y[::-1].copy()), callbacks=[stopper], verbose=0)  # fmt: skip
    assert len(history) < 50
    best = min(history["val_loss"])
    assert bp.evaluate(model, bp.losses.cross_entropy, (x, y[::-1].copy()))["loss"] == pytest.approx(best)


def test_divergence_is_a_clear_error():
    model = _spiral_model()
    x, y = bp.data.spirals(50)
    onehot = np.eye(2)[y] * 1e200
    with pytest.raises(FloatingPointError, match="the training loss became (inf|nan) in epoch 1: training diverged"):
        with np.errstate(all="ignore"):
            bp.fit(model, bp.losses.mse_loss, bp.optim.SGD(model.parameters(), 1.0), (x.astype("float64"), onehot),
                   epochs=2, batch_size=10, verbose=0)  # fmt: skip


def test_resumed_run_equals_the_uninterrupted_one(tmp_path):
    x, y = bp.data.spirals(60)
    data = (x.astype("float64"), y)

    def run(epochs, **kwargs):
        model = _spiral_model()
        opt = bp.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model.layers.insert(2, bp.nn.Dropout(0.2))  # random state matters too
        history = bp.fit(model, bp.losses.cross_entropy, opt, data, epochs, 16, verbose=0, **kwargs)
        return model, history

    whole, whole_history = run(4)
    run(2, checkpoint=tmp_path / "ckpt.npz")
    resumed, resumed_history = run(4, resume=tmp_path / "ckpt.npz")
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), strict=True)
    assert resumed_history["loss"] == whole_history["loss"]


def test_saved_files_get_ordinary_permissions(tmp_path):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        bp.io.save_weights(_spiral_model(), tmp_path / "w.npz")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "w.npz").stat().st_mode) == 0o644
