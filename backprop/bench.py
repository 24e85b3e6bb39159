"""`backprop bench`: runs the benchmark suite in the source checkout's bench/ folder.

The suite and its peers (a per-sample loop, hand-vectorized NumPy, PyTorch eager) live in
bench/, beside the package; an installed copy without the checkout finds it from the working
directory instead.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _suite_path() -> Path:
    for root in (Path(__file__).resolve().parent.parent, Path.cwd()):
        if (root / "bench" / "suite.py").is_file():
            return root / "bench" / "suite.py"
    raise FileNotFoundError(
        "backprop bench needs the source checkout: bench/suite.py not found beside the package or here"
    )


def main(argv=None) -> int:
    spec = importlib.util.spec_from_file_location("backprop_bench_suite", _suite_path())
    suite = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = suite  # dataclasses look their module up there
    spec.loader.exec_module(suite)
    return suite.main(argv)
