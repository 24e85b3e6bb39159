"""Backend entries: the one place that knows each array library. A toy library that backprop has
never heard of, registered through the public path, trains exactly as NumPy does."""

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from cases import CASES
from toy_backend import TOY, ToyArray, ToyBackend

import backprop as bp
from backprop.backends import BACKENDS, CAPTURE_KINDS, BackendEntry, backend_of, unregister_backend


@pytest.fixture
def toy():
    entry = bp.register_backend(ToyBackend())
    try:
        with bp.use_backend("toy"):
            yield entry
    finally:
        unregister_backend("toy")


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_op_gradchecks_on_a_registered_toy_backend(toy, name):
    case = CASES[name]
    inputs = case.inputs("float64")
    assert all(isinstance(t.data, ToyArray) for t in inputs)
    out = case.fn(bp, *inputs)
    assert isinstance(out.data, ToyArray) and backend_of(out.xp) is toy
    assert bp.gradcheck(lambda *ts: case.fn(bp, *ts), *inputs)


def _train(optimizer: str, capture: bool):
    """Ten steps of a small classifier (getitem and take included, so writes and scatter-adds run)."""
    bp.manual_seed(4)
    model = bp.nn.mlp([5, 6, 3], "tanh", dtype="float64")
    params = model.parameters()
    opt = bp.optim.SGD(params, lr=0.2, momentum=0.9) if optimizer == "sgd" else bp.optim.Adam(params, lr=0.05)

    def loss(out, y):
        picked = bp.take(out, [0, 2, 1], axis=1)[:, 1:]  # a gradient written at an index, one scattered
        return bp.losses.cross_entropy(out, y) + 0.1 * (picked * picked).mean()

    step = bp.TrainStep(model, loss, opt, capture=capture)
    rng, be, modes = np.random.default_rng(0), bp.get_backend(), []
    for _ in range(10):
        step(be.asarray(rng.random((8, 5))), be.asarray(rng.integers(0, 3, 8)))
        modes.append(step.mode)
    return [p.numpy() for p in params], [type(p.data) for p in params], modes


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_toy_backend_trains_like_numpy_eagerly_and_captured(toy, optimizer):
    with warnings.catch_warnings():
        warnings.simplefilter("error", bp.CaptureWarning)
        captured, kinds, modes = _train(optimizer, capture=True)
    eager, _, _ = _train(optimizer, capture=False)
    with bp.use_backend("numpy"):
        reference, _, _ = _train(optimizer, capture=False)
    assert set(kinds) == {ToyArray} and modes[-1] == "traced"
    for got, same, want in zip(captured, eager, reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, strict=True)
        np.testing.assert_allclose(same, want, rtol=1e-12, atol=1e-14, strict=True)


def test_toy_arrays_meet_the_rest_of_the_library(toy):
    t = bp.tensor([[1.0, 2.0]])
    assert isinstance(t.data, ToyArray) and bp.backend.backend_name(t.xp) == "toy"
    assert isinstance(bp.to_numpy(t.data), np.ndarray) and "backend=toy" in repr(t)
    with bp.use_backend("numpy"):
        other = bp.tensor([[1.0, 2.0]])
    with pytest.raises(TypeError, match=r"cannot mix arrays of two backends \(toy and numpy\)"):
        t + other
    with pytest.raises(TypeError, match="immutable"):
        t.data[0, 0] = 3.0  # backprop never writes into them: it asks the entry


def test_every_entry_answers_what_backprop_asks():
    for name, entry in BACKENDS.items():
        assert entry.name == name and entry.capture in CAPTURE_KINDS and entry.module
        assert entry.install_hint().startswith("pip install ")
        if entry.unavailable() is not None:
            continue
        devices = entry.devices()
        assert devices, name
        entry.device(devices[0])  # every listed device is accepted
        with pytest.raises(bp.BackendError, match=f"backend '{name}'.*'nowhere'"):
            entry.device("nowhere")


def test_a_backend_that_is_not_installed_names_its_pip_extra():
    class Missing(BackendEntry):
        name, module, extra = "missing", "no_such_array_library", "missing"

    bp.register_backend(Missing())
    try:
        assert BACKENDS["missing"].unavailable() == (
            "backend 'missing' is not installed: pip install \"backprop[missing]\""
        )
        with pytest.raises(bp.BackendError, match=r"pip install \"backprop\[missing\]\""):
            bp.set_backend("missing")
    finally:
        unregister_backend("missing")


def test_registration_refuses_what_would_be_ambiguous():
    with pytest.raises(ValueError, match="a backend named 'numpy' is already registered"):
        bp.register_backend(type("Again", (BackendEntry,), {"name": "numpy", "module": "numpy"})())
    with pytest.raises(ValueError, match="capture must be one of"):
        bp.register_backend(type("Odd", (BackendEntry,), {"name": "odd", "module": "odd", "capture": "magic"})())
    with pytest.raises(bp.BackendError, match="no backend entry for the array namespace"):
        backend_of(type("Namespace", (), {"__name__": "unheard_of"})())


def test_devices_are_checked_when_the_backend_is_chosen():
    with pytest.raises(bp.BackendError, match="runs on the CPU only, not on device 'cuda:0'"):
        bp.set_backend("numpy", "cuda:0")
    assert bp.get_backend().name == "numpy" and bp.get_backend().device is None


def test_torch_refuses_device_types_it_cannot_run_here():
    pytest.importorskip("torch")
    entry = BACKENDS["torch"]
    assert str(entry.device("cpu")) == "cpu"
    for name in ("meta", "mps:3", "xpu", f"cuda:{len(entry.devices())}"):
        with pytest.raises(bp.BackendError, match=f"backend 'torch' has no device '{name}'; devices here: cpu"):
            entry.device(name)


def test_pytorch_tensors_that_require_grad_come_in_without_their_autograd_history():
    torch = pytest.importorskip("torch")
    with bp.use_backend("torch"):
        bp.manual_seed(0)
        model = bp.nn.mlp([4, 5, 3], "relu", dtype="float64")
        step = bp.TrainStep(model, bp.losses.cross_entropy, bp.optim.SGD(model.parameters(), lr=0.1))
        x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
        labels = torch.tensor([0, 1, 2, 0, 1, 2])
        modes = set()
        for _ in range(6):  # warm-up, recording, check, replays
            results = step(x, labels)
            modes.add(step.mode)
        results += step.run_stacked(torch.stack([x, x]), torch.stack([labels, labels]))
        assert "traced" in modes
        target = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
        out = model(bp.Tensor(x))
        loss = bp.losses.quadratic_loss(out, target)
        loss.backward()
        parameters = model.parameters()
        arrays = [*results, out.data, loss.data, *(p.data for p in parameters), *(p.grad for p in parameters)]
        upstream = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)  # a given upstream gradient
        model(bp.Tensor(x)).backward(upstream)
        arrays += [p.grad for p in parameters] + bp.grad(model(bp.Tensor(x)), parameters, grad_output=upstream)
        assert not any(a.requires_grad for a in arrays)  # else each step's update would extend a torch graph
        assert x.requires_grad and target.requires_grad  # the caller's tensors are left as they were


# the names by which code could test which library an array comes from
_IDENTITY = re.compile(
    r"is_(numpy|cupy|torch|jax|dask|ndonnx|array_api_strict)_(array|namespace)|\w\.__name__\s*(==|!=|\.startswith)"
)


def test_no_module_outside_the_backend_layer_tests_a_backends_identity():
    root = Path(bp.__file__).parent.parent
    files = [*(root / "backprop").rglob("*.py"), *(root / "bench").glob("*.py"), root / "noxfile.py"]
    offenders = [
        f"{path.relative_to(root)}:{number}"
        for path in files
        if path.name not in ("backend.py", "backends.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if _IDENTITY.search(line)
        or re.search(r"""\b\w*(backend|name)\)? (==|!=|in) \(?["'](numpy|cupy|torch|jax|array_api)""", line)
    ]
    assert offenders == [], "backend identity tested outside backend.py/backends.py"


def test_the_toy_namespace_is_not_mistaken_for_numpy():
    assert backend_of(bp.backend.NUMPY).name == "numpy"
    entry = bp.register_backend(ToyBackend())
    try:
        assert backend_of(TOY) is entry
    finally:
        unregister_backend("toy")


def test_a_backend_that_cannot_run_here_says_why_once_and_keeps_saying_it():
    class Broken(BackendEntry):
        name, module = "broken", "json"  # importable, but its probe fails (as CuPy's without a GPU)
        loads = 0

        def load(self):
            type(self).loads += 1
            raise RuntimeError("no device answers")

    entry = bp.register_backend(Broken())
    try:
        reasons = {entry.unavailable() for _ in range(3)}
        assert reasons == {"backend 'broken' is installed but cannot create an array here: no device answers"}
        assert Broken.loads == 1
    finally:
        unregister_backend("broken")
