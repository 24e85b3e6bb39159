"""Test sessions per backend and BLAS configuration; `nox -s tests` runs the default matrix.

nox -s tests            every backend in the default matrix (backprop/backends.py: numpy at all BLAS
                        threads and at 1, array_api_strict, torch, cupy); a GPU backend skips itself
                        with the reason where no GPU answers
nox -s tests_mpi        backprop.distributed under mpiexec (also part of `nox -s tests`)
nox -s tests_jax        JAX on the CPU (a large download, so not in the default matrix)
nox -s tests_mkl        NumPy built from source against MKL (about 5 minutes on 2 cores)
nox -s lint             ruff
nox -s docs             the documentation site (mkdocs.yml, docs/): mkdocs build --strict into site/
nox -s package          sdist + wheel (python -m build), twine check, contents; the wheel run in a clean venv
nox -s readme           every README bash/python block and example, installed, outside the checkout
"""

import importlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
import zipfile
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
    "pooch>=1.8",
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


@nox.session
def docs(session):
    """The documentation site (mkdocs.yml, docs/) built with warnings as errors into site/."""
    session.install("-e", ".[docs]")
    # NO_MKDOCS_2_WARNING: Material for MkDocs prints a notice of its end of life (2027) on every
    # build; Zensical, its successor, reads the same mkdocs.yml
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})


ROOT = Path(__file__).resolve().parent
# what the wheel must hold besides every module of backprop/, and what it must not
WHEEL_NEEDS = ["backprop/data/digits.csv.gz", "backprop/data/DIGITS-LICENSE.txt", "{dist_info}/licenses/LICENSE"]
# what a from-sdist build needs (pyproject.toml, the readme, the licence files, the package and its
# data), and the test suite with what it reads (examples/, bench/)
SDIST_NEEDS = [
    "PKG-INFO", "pyproject.toml", "README.md", "LICENSE", "backprop/__init__.py", "backprop/data/digits.csv.gz",
    "backprop/data/DIGITS-LICENSE.txt", "tests/conftest.py", "tests/readme_trial.py", "examples/_common.py",
    "bench/suite.py",
]  # fmt: skip
JUNK = re.compile(r"(^|/)(\.[a-z_-]+|__pycache__|build|dist|site)/|\.py[cod]$")  # .venv/, .nox/, .git/, caches


def _build(session) -> tuple[Path, Path]:
    """sdist and wheel by `python -m build` (the wheel is built from the sdist) in the session's tmp folder."""
    session.install("build>=1.2")
    dist = Path(session.create_tmp()).resolve() / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(dist), str(ROOT))
    if not dist.is_dir():  # --install-only
        return Path(), Path()
    (sdist,), (wheel,) = dist.glob("*.tar.gz"), dist.glob("*.whl")
    # setuptools writes backprop.egg-info beside the source, and build/ where a wheel is built in place
    leftovers = [p.name for p in ROOT.iterdir() if p.name in ("build", "dist") or p.name.endswith(".egg-info")]
    if leftovers and shutil.which("git") and (ROOT / ".git").exists():
        check = ["git", "-C", str(ROOT), "check-ignore", "-q"]
        kept = [name for name in leftovers if subprocess.run([*check, name]).returncode != 0]
        if kept:
            session.error(f"building left {kept} in the checkout, and .gitignore does not ignore them")
    return sdist, wheel


def _check_dists(session, sdist: Path, wheel: Path) -> None:
    """The wheel holds every module of backprop/, its data and licences and nothing else; the sdist
    holds what a from-sdist build and the test suite need, and no junk."""
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
        dist_info = next(n.split("/")[0] for n in in_wheel if n.split("/")[0].endswith(".dist-info"))
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    modules = {f"backprop/{p.relative_to(ROOT / 'backprop').as_posix()}" for p in (ROOT / "backprop").rglob("*.py")}
    modules = {name for name in modules if "__pycache__" not in name}
    missing = sorted({n.format(dist_info=dist_info) for n in WHEEL_NEEDS} - in_wheel) + sorted(modules - in_wheel)
    junk = sorted(n for n in in_wheel if JUNK.search(n) or n.split("/")[0] not in ("backprop", dist_info))
    if missing or junk:
        session.error(f"{wheel.name}: missing {missing}, junk {junk}")
    if "backprop = backprop.cli:main" not in entry_points:
        session.error(f"{wheel.name}: no `backprop` console script in entry_points.txt:\n{entry_points}")
    with tarfile.open(sdist) as archive:
        in_sdist = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    package = {n for n in in_wheel if n.startswith("backprop/")}
    missing = sorted(set(SDIST_NEEDS) - in_sdist) + sorted(package - in_sdist)
    junk = sorted(n for n in in_sdist if JUNK.search(n) or n.startswith("bench/results/"))
    if missing or junk:
        session.error(f"{sdist.name}: missing {missing}, junk {junk}")
    session.log(f"{wheel.name}: {len(in_wheel)} files; {sdist.name}: {len(in_sdist)} files; contents as expected")


@nox.session
def package(session):
    """sdist and wheel as `python -m build` makes them, `twine check --strict`, their contents; then the
    wheel with [plot,progress] in a clean venv, run from outside the checkout: --version, info, train."""
    sdist, wheel = _build(session)
    session.install("twine>=6")
    session.run("twine", "check", "--strict", str(sdist), str(wheel))
    if not wheel.is_file():  # --install-only
        return
    _check_dists(session, sdist, wheel)
    trial = Path(session.create_tmp()).resolve() / "clean-venv"
    session.run("python", "-m", "venv", "--clear", str(trial))
    scripts = trial / ("Scripts" if sys.platform == "win32" else "bin")
    python, console = scripts / "python", shutil.which("backprop", path=str(scripts)) or scripts / "backprop"
    session.run(str(python), "-m", "pip", "install", "--quiet", f"{wheel}[plot,progress]", external=True)
    version = wheel.name.split("-")[1]
    env = {"PYTHONPATH": None, "MPLBACKEND": "Agg"}  # nothing but the clean venv's own packages
    with tempfile.TemporaryDirectory(prefix="backprop-package-") as outside, session.chdir(outside):

        def backprop(*args: str) -> str:
            out = session.run(str(console), *args, external=True, silent=True, env=env)  # the console script
            session.log(out.rstrip())
            return out

        where = session.run(str(python), "-c", "import backprop; print(backprop.__file__)", external=True,
                            silent=True, env=env).strip()  # fmt: skip
        if not Path(where).resolve().is_relative_to(trial.resolve()):
            session.error(f"backprop was imported from {where}, not from the clean venv {trial}")
        if backprop("--version").strip() != f"backprop {version}":
            session.error(f"`backprop --version` does not say the wheel's version {version}")
        if not re.search(r"^\s+numpy\s+\S+\s+devices", backprop("info"), re.M):
            session.error("`backprop info` does not list NumPy with its devices")
        plot = Path(outside) / "t.png"
        trained = backprop("train", "--epochs", "2", "--plot", str(plot))
        accuracy = re.search(r"test accuracy (\d\.\d+) after 2 epochs", trained)
        if not accuracy or float(accuracy[1]) < 0.5:
            session.error("`backprop train --epochs 2` does not report a test accuracy above 0.5")
        if not plot.is_file() or plot.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n" or plot.stat().st_size < 1000:
            session.error(f"`backprop train --plot` wrote no PNG image to {plot}")
    session.log(f"the wheel installs and trains from {trial}: test accuracy {accuracy[1]} after 2 epochs")


@nox.session
def readme(session):
    """Every ```bash and ```python block of README.md and every example at its shortest settings
    (tests/readme_trial.py), with the wheel installed in the session's fresh venv, run outside the checkout."""
    _, wheel = _build(session)
    session.install(f"{wheel}[plot,progress]" if wheel.is_file() else ".[plot,progress]")
    with tempfile.TemporaryDirectory(prefix="backprop-readme-") as outside, session.chdir(outside):
        session.run("python", str(ROOT / "tests" / "readme_trial.py"), "--installed", *session.posargs,
                    env={"PYTHONPATH": None, "MPLBACKEND": "Agg"})  # fmt: skip
