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


@pytest.fixture(autouse=True)
def _process_backend_restored():
    """The process-wide backend as it was before the test: a test (or a command line it runs with
    --backend) that calls set_backend must not change the backend of the tests after it."""
    from backprop import backend as flag

    saved = flag._default
    yield
    flag._default = saved


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
