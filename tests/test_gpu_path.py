"""What the GPU path needs, checked where no GPU is: no op waits for the device.

A CUDA graph cannot hold a host sync, and on CuPy a boolean mask (array-api-compat's `clip` and
`sign` used them) or a data-dependent shape is one. array_api_strict can refuse both
(`boolean_indexing=False, data_dependent_shapes=False`): every op, loss and step then runs as a
GPU capture needs it to.
"""

import numpy as np
import pytest

import backprop as bp
from backprop import losses
from backprop.errors import ConfigError

strict = pytest.importorskip("array_api_strict", reason="array_api_strict is not installed")

rng = np.random.default_rng(11)


def _cupy_compat_clip(x, /, min=None, max=None):
    """array-api-compat's clip for CuPy, in short: writes through boolean masks."""
    out = strict.asarray(x, copy=True)
    if min is not None:
        out[out < min] = min
    if max is not None:
        out[out > max] = max
    return out


def _cupy_compat_sign(x, /):
    """array-api-compat's sign for CuPy, in short: mends NaNs through a boolean mask."""
    out = _native_sign(x)
    out[strict.isnan(x)] = float("nan")
    return out


_native_sign = strict.sign


@pytest.fixture
def no_device_waits(monkeypatch):
    if bp.backends.get_entry("array_api_strict").unavailable():
        pytest.skip("array_api_strict cannot run here")
    monkeypatch.setattr(strict, "clip", _cupy_compat_clip)  # as CuPy's namespace has them: never to be called
    monkeypatch.setattr(strict, "sign", _cupy_compat_sign)
    monkeypatch.setattr(bp.backends.get_entry("array_api_strict"), "sign", _native_sign)  # as CuPy's entry does
    with strict.ArrayAPIStrictFlags(boolean_indexing=False, data_dependent_shapes=False):
        with bp.use_backend("array_api_strict"):
            yield


def _t(values, requires_grad=True):
    return bp.tensor(np.asarray(values, dtype="float64"), dtype="float64", requires_grad=requires_grad)


def test_the_flags_do_refuse_a_boolean_mask(no_device_waits):
    x = strict.asarray([1.0, -2.0])
    for wait in (lambda: x[x > 0], lambda: strict.clip(x, 0.0, 1.0), lambda: strict.sign(x)):
        with pytest.raises(RuntimeError, match="oolean"):
            wait()


@pytest.mark.parametrize(
    "name, fn",
    [
        ("abs", lambda x: bp.abs(x)),
        ("clip", lambda x: bp.clip(x, -0.5, 0.7)),
        ("clip below", lambda x: bp.clip(x, min=-0.5)),
        ("maximum", lambda x: bp.maximum(x, x * 0.5)),
        ("relu", lambda x: bp.relu(x)),
        ("logsumexp", lambda x: bp.logsumexp(x, axis=-1)),
        ("max", lambda x: bp.max(x, axis=-1)),
        ("matmul 1-D", lambda x: x[0] @ bp.tensor(np.ones((4, 2)), dtype="float64")),
    ],
)
def test_ops_forward_and_backward_never_wait_for_the_device(no_device_waits, name, fn):
    x = _t(rng.normal(size=(3, 4)))
    out = fn(x)
    (out * _t(rng.normal(size=out.shape), requires_grad=False)).sum().backward()
    assert x.grad is not None and tuple(x.grad.shape) == (3, 4)


@pytest.mark.parametrize(
    "loss, target",
    [
        (losses.quadratic_loss, rng.uniform(0, 1, (5, 3))),
        (losses.mse_loss, rng.uniform(0, 1, (5, 3))),
        (losses.binary_cross_entropy, np.eye(3)[[0, 1, 2, 0, 1]]),
        (losses.binary_cross_entropy_with_logits, rng.uniform(0, 1, (5, 3))),
        (losses.cross_entropy, np.array([0, 2, 1, 1, 0])),
        (losses.cross_entropy, rng.dirichlet(np.ones(3), 5)),
    ],
)
def test_losses_never_wait_for_the_device(no_device_waits, loss, target):
    pred = _t(rng.uniform(0.01, 0.99, (5, 3)))
    target = bp.tensor(target) if target.dtype.kind == "i" else bp.tensor(target, dtype="float64")
    loss(pred, target).backward()
    assert pred.grad is not None


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_captured_step_never_waits_for_the_device(no_device_waits, optimizer):
    bp.manual_seed(0)
    model = bp.nn.mlp([4, 6, 3], "tanh", dtype="float64")
    opt = (
        bp.optim.SGD(model.parameters(), 0.1, momentum=0.9) if optimizer == "sgd" else bp.optim.Adam(model.parameters())
    )
    step = bp.TrainStep(model, bp.losses.cross_entropy, opt, gradient_hooks=[bp.optim.ClipGradNorm(1.0)])
    x, y = bp.tensor(rng.normal(size=(8, 4)), dtype="float64"), bp.tensor(rng.integers(0, 3, 8))
    modes = [step(x, y) and step.mode for _ in range(5)]
    assert modes[-1] == "traced", modes


def test_fit_checks_labels_once_on_the_host_where_steps_read_none(backend):
    """On CuPy (and in replays) a loss reads no labels: fit checks each dataset's first."""
    x, y = rng.normal(size=(20, 4)), rng.integers(0, 3, 20)
    y[17] = 5
    bp.manual_seed(0)
    model = bp.nn.mlp([4, 6, 3], "tanh", dtype="float64")
    with pytest.raises(ConfigError, match=r"training labels must be in 0..2 for 3 outputs: label 5 at index 17"):
        bp.fit(model, bp.losses.cross_entropy, bp.optim.SGD(model.parameters(), 0.1), (x, y), 1, 4, capture=True,
               verbose=0)  # fmt: skip


class _DeviceLog:
    """A stand-in for a library with a current device (as CuPy has): records what is selected."""

    def __init__(self):
        self.events = []

    def on(self, device):
        import contextlib

        @contextlib.contextmanager
        def entered():
            self.events.append(("enter", device))
            yield
            self.events.append(("exit", device))

        return entered()

    def select(self, device):
        self.events.append(("select", device))


def test_the_chosen_device_is_the_current_one_for_kernels(monkeypatch):
    """CuPy runs kernels on its current device whatever array a `device=` made: choosing a backend
    and device selects it (set_backend, BACKPROP_DEVICE) or enters it (use_backend)."""
    entry, log = bp.backends.get_entry("numpy"), _DeviceLog()
    monkeypatch.setattr(entry, "on", log.on)
    monkeypatch.setattr(entry, "select", log.select)
    before = bp.get_backend()
    try:
        device = bp.set_backend("numpy", "cpu").device  # the entry's own device object
        assert log.events == [("select", device)]
        with bp.use_backend("numpy", "cpu"):
            assert log.events[-1] == ("enter", device)
        assert log.events[-1] == ("exit", device)
    finally:
        bp.set_backend(before.name, before.device)
