"""Which BLAS NumPy loaded, and with how many threads (via threadpoolctl, in the `progress` extra).

>>> from backprop.blas import numpy_blas
>>> sorted(numpy_blas())
['num_threads', 'vendor', 'version']
"""

from __future__ import annotations

from backprop.errors import MissingDependency, count

INSTALL = 'pip install "backprop[progress]"'  # the quick start's extra brings threadpoolctl


def numpy_blas() -> dict:
    """The BLAS that NumPy's matrix products use: vendor ('openblas', 'mkl', ...), version, threads."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError as error:
        raise MissingDependency(
            f"reading NumPy's BLAS and its threads needs threadpoolctl: {INSTALL} (or pip install threadpoolctl)"
        ) from error
    import numpy as np

    np.ones((2, 2)) @ np.ones((2, 2))  # make sure the BLAS is loaded
    found = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    if not found:
        raise RuntimeError("NumPy has no BLAS loaded that threadpoolctl can see")
    pool = found[0]
    return {"vendor": pool["internal_api"], "version": pool.get("version"), "num_threads": pool["num_threads"]}


def assert_blas(vendor: str, num_threads: int) -> None:
    """Fail unless NumPy runs on `vendor` with `num_threads` threads (the nox sessions call this)."""
    actual = numpy_blas()
    if actual["vendor"] != vendor or actual["num_threads"] != num_threads:
        raise SystemExit(f"expected {vendor} with {count(num_threads, 'thread')}, but NumPy loaded {actual}")
    print(f"BLAS as claimed: {actual}")
