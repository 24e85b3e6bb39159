#!/usr/bin/env bash
# On a machine with an NVIDIA GPU where CuPy (and PyTorch) are already installed, without network:
# a smoke check (one kernel, one matrix product, one captured step), the test suite on CuPy, then
# the GPU benchmark suite -> bench/results/<name>.{md,json,png}.
#
#   bench/gpu.sh gpu-h200            # name of the results (default: gpu)
#
# It installs nothing. array-api-compat and array-api-strict (pure Python) must be importable: where
# they are missing, put their wheels' contents on PYTHONPATH (pip download, then unzip the wheels).
# A failing test does not stop the benchmark; the script exits non-zero at the end if one failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
missing=$(python3 - <<'PY'
import importlib.util
needed = ["array_api_compat", "cupy", "pytest", "hypothesis", "threadpoolctl", "array_api_strict"]
print(" ".join(name for name in needed if importlib.util.find_spec(name) is None))
PY
)
if [ -n "$missing" ]; then
    echo "gpu.sh needs these Python packages, not importable here: $missing" >&2
    exit 1
fi
if [ "$(pip list 2>/dev/null | grep -ciE '^cupy-cuda1[23]x ')" -gt 1 ]; then
    echo "gpu.sh: both cupy-cuda12x and cupy-cuda13x are installed; keep one" >&2
    exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 - <<'PY' || { echo "gpu.sh: the smoke check failed: CuPy cannot run a kernel, a GEMM or a step here" >&2; exit 1; }
import cupy, numpy as np
import backprop as bp
x = cupy.arange(6.0).reshape(2, 3)
print("kernel", float((x * 2).sum().get()), "gemm", float((x @ x.T).sum().get()))
with bp.use_backend("cupy"):
    bp.manual_seed(0)
    model = bp.nn.mlp([784, 30, 10], "sigmoid", "sigmoid", dtype="float32")
    step = bp.TrainStep(model, bp.losses.quadratic_loss, bp.optim.SGD(model.parameters(), lr=3.0))
    xb, yb = bp.tensor(np.random.rand(10, 784), dtype="float32"), bp.tensor(np.eye(10)[np.arange(10)], dtype="float32")
    print("TrainStep modes", [step(xb, yb) and step.mode for _ in range(6)])
PY
status=0
BACKPROP_TEST_BACKENDS=cupy python3 -m pytest -q -rs -p no:cacheprovider tests || status=$?
python3 -m bench.suite --device gpu --name "${1:-gpu}" || status=$?
exit $status
