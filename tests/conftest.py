"""The `backend` fixture: every test that takes it runs once per installed array backend.

BACKPROP_TEST_BACKENDS (comma-separated) narrows the list; the nox sessions set it. CuPy runs only
where a GPU answers; elsewhere it is skipped with the reason.
"""

import importlib.util
import os

import pytest

import backprop as bp

collect_ignore = ["cases.py", "torch_reference.py"]  # helpers, imported by the tests that need them

ALL_BACKENDS = ("numpy", "array_api_strict", "torch", "jax", "cupy")


def selected_backends() -> list[str]:
    chosen = os.environ.get("BACKPROP_TEST_BACKENDS")
    return [name.strip() for name in chosen.split(",")] if chosen else list(ALL_BACKENDS)


def _skip_reason(name: str) -> str | None:
    module = {"jax": "jax"}.get(name, name)
    if importlib.util.find_spec(module) is None:
        return f"{name} is not installed"
    if name == "cupy":
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() < 1:
                return "cupy is installed but no NVIDIA GPU is present"
        except Exception as error:  # no driver, no device
            return f"cupy is installed but no NVIDIA GPU answers: {error}"
    return None


@pytest.fixture(params=selected_backends())
def backend(request):
    """The name of the backend in force for this test (via bp.use_backend)."""
    reason = _skip_reason(request.param)
    if reason:
        pytest.skip(reason)
    with bp.use_backend(request.param):
        yield request.param


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(1234)
