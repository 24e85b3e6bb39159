"""Test sessions per backend and BLAS configuration; `nox -s tests` runs the default matrix.

nox -s tests            every backend in the default matrix (backprop/backends.py: numpy at all BLAS
                        threads and at 1, array_api_strict, torch, cupy); a GPU backend skips itself
                        with the reason where no GPU answers
nox -s tests_mpi        backprop.distributed under mpiexec (also part of `nox -s tests`)
nox -s tests_jax        JAX on the CPU (a large download, so not in the default matrix)
nox -s tests_mkl        NumPy built from source against MKL (about 5 minutes on 2 cores)
nox -s lint             ruff
"""

import importlib
import os
import shutil
import sys
import types
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.default_venv_backend = "venv"

TEST_DEPS = [
    "pytest>=8",
    "hypothesis>=6.100",
    "threadpoolctl>=3.5",
    "array-api-strict>=2.3",
    "matplotlib>=3.8",
    "tqdm>=4.60",
]


def _backends() -> dict:
    """backprop's backend entries, read from its source: backprop/__init__.py needs NumPy, which
    nox's own Python lacks, so a bare package stands in for it (backends.py needs no NumPy)."""
    package = types.ModuleType("backprop")
    package.__path__ = [str(Path(__file__).resolve().parent / "backprop")]
    sys.modules.setdefault("backprop", package)
    return importlib.import_module("backprop.backends").BACKENDS


BACKENDS = _backends()


def _project(entry) -> str:
    """The project with the extra that installs `entry`'s library (the pins live in pyproject.toml)."""
    return f".[{entry.extra}]" if entry.extra else "."


def _run_tests(session, backend: str, blas: str, threads: int | None, full_examples: bool = False) -> None:
    env = {"BACKPROP_TEST_BACKENDS": backend, "BACKPROP_FULL_EXAMPLES": "1" if full_examples else "0"}
    if threads is not None:
        env.update(OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    expected = threads or os.cpu_count()
    session.run("python", "-c", f"from backprop.blas import assert_blas; assert_blas({blas!r}, {expected})", env=env)
    session.run("python", "-m", "pytest", "-q", *session.posargs, env=env)


def _backend_session(session, name: str, threads: int | None = None) -> None:
    """Install backprop with `name`'s extra and run the suite on that backend (NumPy: OpenBLAS at
    `threads`, all by default). A GPU backend skips the session where no GPU answers."""
    entry = BACKENDS[name]
    if entry.on_gpu and shutil.which("nvidia-smi") is None:
        session.skip(f"no NVIDIA GPU on this machine (nvidia-smi not found): {name} tests skipped")
    session.install("-e", _project(entry), *TEST_DEPS)
    probe = f"import backprop.backends as b; print(b.BACKENDS[{name!r}].unavailable() or 'ready')"
    answer = session.run("python", "-c", probe, silent=True)  # None under --install-only
    if answer is not None and answer.strip().splitlines()[-1:] != ["ready"]:
        session.skip(f"{name} cannot run here: {' '.join(answer.split())}")
    # the examples' full MNIST runs (accuracy thresholds) once, in the first session of the matrix
    _run_tests(session, name, "openblas", threads, full_examples=(name, threads) == FIRST)


def _default_matrix() -> list:
    """One parameter per default backend and BLAS thread count (NumPy's: all threads and one)."""
    params = []
    for name, entry in BACKENDS.items():
        if entry.default_tests:
            for threads in entry.test_threads:
                suffix = "" if len(entry.test_threads) == 1 else f"-openblas-{threads or 'all'}"
                params.append(nox.param(name, threads, id=name + suffix))
    params.append(nox.param("mpi", None, id="mpi"))  # data-parallel tests under mpiexec (tests_mpi)
    return params


FIRST = tuple(_default_matrix()[0].args)  # the session that also runs the examples in full


@nox.session
@nox.parametrize("backend, threads", _default_matrix())
def tests(session, backend, threads):
    """The test suite on one backend (and one BLAS thread count), or the data-parallel tests."""
    if backend == "mpi":
        tests_mpi(session)
    else:
        _backend_session(session, backend, threads)


@nox.session
def tests_mpi(session):
    """backprop.distributed under `mpiexec -n 2` and `-n 3`: mpi4py and MPICH from PyPI."""
    session.install("-e", ".[mpi]", *TEST_DEPS)
    session.run("python", "-m", "pytest", "-q", "tests/test_distributed.py", *session.posargs,
                env={"OPENBLAS_NUM_THREADS": "1"})  # fmt: skip


@nox.session
def tests_jax(session):
    """The test suite on JAX (CPU)."""
    _backend_session(session, "jax")


def _install_numpy_with_mkl(session) -> None:
    """NumPy built from source against PyPI's MKL (single dynamic library), about 4 minutes."""
    session.install("mkl-devel", "meson-python", "meson", "ninja", "cython", "pkgconfig")
    pkgconfig = os.path.join(session.virtualenv.location, "lib", "pkgconfig")
    session.install(
        "--no-binary=numpy", "--no-build-isolation", "--no-cache-dir", "numpy>=2",
        "-Csetup-args=-Dblas=mkl-sdl", "-Csetup-args=-Dlapack=mkl-sdl",
        env={"PKG_CONFIG_PATH": pkgconfig},
    )  # fmt: skip


@nox.session
def tests_mkl(session):
    """NumPy built from source against PyPI's MKL, then the suite on it."""
    _install_numpy_with_mkl(session)
    session.install("-e", ".", *TEST_DEPS)
    _run_tests(session, "numpy", "mkl", None)


@nox.session
def lint(session):
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


BENCH_DEPS = ["threadpoolctl>=3.5", "matplotlib>=3.8"]
# every CPU backend of the default matrix (PyTorch's extra also installs the PyTorch peer)
BENCH_PROJECT = ".[{}]".format(
    ",".join(e.extra for e in BACKENDS.values() if e.default_tests and e.extra and not e.on_gpu)
)


@nox.session
def bench(session):
    """The benchmark suite (S, L, AE, layer) at 1 and all threads; pass options after --."""
    session.install("-e", BENCH_PROJECT, *BENCH_DEPS)
    session.run("backprop", "bench", *session.posargs)


@nox.session
def bench_mkl(session):
    """The benchmark suite with NumPy on MKL (results named cpu-mkl unless --name is given)."""
    _install_numpy_with_mkl(session)
    session.install("-e", BENCH_PROJECT, *BENCH_DEPS)
    session.run("python", "-c", f"from backprop.blas import assert_blas; assert_blas('mkl', {os.cpu_count()})")
    session.run("backprop", "bench", *(session.posargs or ["--name", "cpu-mkl"]))
