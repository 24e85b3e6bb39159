"""The `backend` fixture: every test that takes it runs once per installed array backend.

The backends are backprop's own list (backprop.backends.BACKENDS). BACKPROP_TEST_BACKENDS
(comma-separated) narrows it; the nox sessions set it. A backend that cannot run here (not
installed, or CuPy without a GPU that answers) is skipped with the entry's reason.
"""

import os

import pytest

import backprop as bp
from backprop.backends import BACKENDS, get_entry

collect_ignore = [
    "cases.py",
    "torch_reference.py",
    "toy_backend.py",
    "distributed_run.py",
]  # helpers, imported by the tests that need them


def selected_backends() -> list[str]:
    chosen = os.environ.get("BACKPROP_TEST_BACKENDS")
    return [name.strip() for name in chosen.split(",")] if chosen else list(BACKENDS)


@pytest.fixture(params=selected_backends())
def backend(request):
    """The name of the backend in force for this test (via bp.use_backend)."""
    reason = get_entry(request.param).unavailable()
    if reason:
        pytest.skip(reason)
    with bp.use_backend(request.param):
        yield request.param


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(1234)
