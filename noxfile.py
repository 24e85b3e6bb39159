"""Test sessions per backend and BLAS configuration; `nox -s tests` runs the default matrix.

nox -s tests            numpy (OpenBLAS, all threads and 1 thread), array_api_strict, torch, cupy
nox -s tests_jax        JAX on the CPU (a large download, so not in the default matrix)
nox -s tests_mkl        NumPy built from source against MKL (about 5 minutes on 2 cores)
nox -s lint             ruff
"""

import os
import shutil

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
EXTRAS = {"numpy": [], "array_api_strict": [], "torch": ["torch==2.13.0"], "jax": ["jax>=0.4.32"]}


def _run_tests(session, backend: str, blas: str, threads: int | None, full_examples: bool = False) -> None:
    env = {"BACKPROP_TEST_BACKENDS": backend, "BACKPROP_FULL_EXAMPLES": "1" if full_examples else "0"}
    if threads is not None:
        env.update(OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    expected = threads or os.cpu_count()
    session.run("python", "-c", f"from backprop.blas import assert_blas; assert_blas({blas!r}, {expected})", env=env)
    session.run("python", "-m", "pytest", "-q", *session.posargs, env=env)


@nox.session
@nox.parametrize(
    "backend, threads",
    [
        nox.param("numpy", None, id="numpy-openblas-all"),
        nox.param("numpy", 1, id="numpy-openblas-1"),
        nox.param("array_api_strict", None, id="array_api_strict"),
        nox.param("torch", None, id="torch"),
        nox.param("cupy", None, id="cupy"),
    ],
)
def tests(session, backend, threads):
    """The test suite on one backend (and one BLAS thread count)."""
    if backend == "cupy":
        _install_cupy_or_skip(session)
    session.install("-e", ".", *TEST_DEPS, *EXTRAS.get(backend, []))
    # the examples' full MNIST runs (accuracy thresholds) once, in the first session
    _run_tests(session, backend, "openblas", threads, full_examples=backend == "numpy" and threads is None)


def _install_cupy_or_skip(session) -> None:
    """CuPy runs only where an NVIDIA GPU answers inside this session's own environment."""
    if shutil.which("nvidia-smi") is None:
        session.skip("no NVIDIA GPU on this machine (nvidia-smi not found): CuPy tests skipped")
    session.install("cupy-cuda12x>=14")
    probe = "import cupy; assert cupy.cuda.runtime.getDeviceCount() > 0"
    try:
        session.run("python", "-c", probe, silent=True)
    except nox.command.CommandFailed:
        session.skip("CuPy installed but no GPU answers in this environment: CuPy tests skipped")


@nox.session
def tests_jax(session):
    """The test suite on JAX (CPU)."""
    session.install("-e", ".", *TEST_DEPS, *EXTRAS["jax"])
    _run_tests(session, "jax", "openblas", None)


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


BENCH_DEPS = ["threadpoolctl>=3.5", "matplotlib>=3.8", "array-api-strict>=2.3", *EXTRAS["torch"]]


@nox.session
def bench(session):
    """The benchmark suite (S, L, AE, layer) at 1 and all threads; pass options after --."""
    session.install("-e", ".", *BENCH_DEPS)
    session.run("backprop", "bench", *session.posargs)


@nox.session
def bench_mkl(session):
    """The benchmark suite with NumPy on MKL (results named cpu-mkl unless --name is given)."""
    _install_numpy_with_mkl(session)
    session.install("-e", ".", *BENCH_DEPS)
    session.run("python", "-c", f"from backprop.blas import assert_blas; assert_blas('mkl', {os.cpu_count()})")
    session.run("backprop", "bench", *(session.posargs or ["--name", "cpu-mkl"]))
