"""`backprop bench`: runs the benchmark suite, which lives in the source checkout's bench/ package.

The suite and its peers (a per-sample loop, hand-vectorized NumPy, PyTorch eager) are not part of
the installed package: `backprop bench` works from a checkout installed with `pip install -e .`,
and says so anywhere else.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from backprop.errors import UserError


def checkout_bench() -> Path:
    """The bench/ folder of the source checkout this backprop runs from."""
    bench = Path(__file__).resolve().parent.parent / "bench"
    if not (bench / "suite.py").is_file():
        raise UserError(
            f"backprop bench runs from a source checkout, and this backprop ({Path(__file__).parent}) has no "
            "bench/ beside it: clone the repository and `pip install -e .` there, or run `python -m bench.suite` in it"
        )
    return bench


def load_suite(bench: Path):
    """The bench package's suite module, imported from `bench` (no sys.path change)."""
    if "bench" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "bench", bench / "__init__.py", submodule_search_locations=[str(bench)]
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules["bench"] = package
        spec.loader.exec_module(package)
    elif Path(sys.modules["bench"].__path__[0]).resolve() != bench.resolve():
        raise UserError(f"another package named 'bench' is imported ({sys.modules['bench'].__path__[0]})")
    return importlib.import_module("bench.suite")


def main(argv=None) -> int:
    return load_suite(checkout_bench()).main(argv)
