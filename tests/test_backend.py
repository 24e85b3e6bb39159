"""The backend flag: set_backend, use_backend, BACKPROP_BACKEND, errors, and seeded randomness."""

import os
import subprocess
import sys

import numpy as np
import pytest

import backprop as bp
from backprop.backend import backend_name


def test_default_backend_is_numpy():
    assert bp.get_backend().name == "numpy"
    assert isinstance(bp.tensor([1.0]).data, np.ndarray)


def test_use_backend_nests_and_restores():
    with bp.use_backend("array_api_strict"):
        assert bp.get_backend().name == "array_api_strict"
        with bp.use_backend("numpy"):
            assert bp.get_backend().name == "numpy"
        assert backend_name(bp.tensor([1.0]).xp) == "array_api_strict"
    assert bp.get_backend().name == "numpy"


def test_use_backend_restores_after_an_error():
    with pytest.raises(ZeroDivisionError):
        with bp.use_backend("array_api_strict"):
            raise ZeroDivisionError
    assert bp.get_backend().name == "numpy"


def test_set_backend_switches_the_process_default():
    try:
        bp.set_backend("array_api_strict")
        assert backend_name(bp.zeros(2).xp) == "array_api_strict"
    finally:
        bp.set_backend("numpy")


def test_unknown_backend_names_itself_and_the_installed_ones():
    with pytest.raises(bp.BackendError, match=r"unknown backend 'tensorflow'; installed backends: numpy"):
        bp.set_backend("tensorflow")


def test_environment_variable_is_read_at_import():
    code = "import backprop as bp; print(bp.get_backend().name, type(bp.tensor([1.0]).data).__module__)"
    env = {**os.environ, "BACKPROP_BACKEND": "array_api_strict"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["array_api_strict", "array_api_strict._array_object"]


def test_bad_environment_variable_fails_at_first_use_with_a_clear_message():
    env = {**os.environ, "BACKPROP_BACKEND": "nope"}
    code = "import backprop\ntry:\n    backprop.get_backend()\nexcept backprop.BackendError as e:\n    print(e)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.startswith("BACKPROP_BACKEND='nope': unknown backend 'nope'")


def test_mixing_backends_is_a_clear_error():
    a = bp.tensor([1.0, 2.0])
    with bp.use_backend("array_api_strict"):
        b = bp.tensor([1.0, 2.0])
    message = r"cannot mix arrays of two backends \(numpy and array_api_strict\)"
    for mixed in (lambda: a + b, lambda: bp.linear(a[None, :], b[:, None]), lambda: bp.concat([a, b]),
                  lambda: bp.stack([a, b]), lambda: bp.where(a > 0.0, a, b)):  # fmt: skip
        with pytest.raises(TypeError, match=message):
            mixed()


def test_same_seed_same_parameters_on_every_backend(backend):
    bp.manual_seed(42)
    here = bp.randn(3, 4, dtype="float64").numpy()
    with bp.use_backend("numpy"):
        bp.manual_seed(42)
        reference = bp.randn(3, 4, dtype="float64").numpy()
    np.testing.assert_array_equal(here, reference, strict=True)


def test_creation_follows_the_current_backend(backend):
    for t in (bp.zeros(2, 3), bp.ones((2, 3)), bp.rand(2, 3), bp.randn(2, 3), bp.tensor([[1.0, 2.0, 3.0]] * 2)):
        assert backend_name(t.xp) == backend and t.shape == (2, 3)
        assert str(t.dtype).endswith("float32")
    assert str(bp.tensor(np.ones(2)).dtype).endswith("float64")  # arrays keep their dtype
