#!/usr/bin/env bash
# On a machine with an NVIDIA GPU where CuPy (and PyTorch) are already installed, without network:
# the test suite on CuPy, then the GPU benchmark suite -> bench/results/<name>.{md,json,png}.
#
#   bench/gpu.sh gpu-h100            # name of the results (default: gpu)
#
# It installs nothing. array-api-compat (pure Python) must be importable: where it is missing,
# put its wheel's contents on PYTHONPATH (pip download array-api-compat, then unzip the wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import array_api_compat, cupy; assert cupy.cuda.runtime.getDeviceCount() > 0" || {
    echo "gpu.sh needs array-api-compat, CuPy and a GPU that answers" >&2
    exit 1
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
BACKPROP_TEST_BACKENDS=cupy python3 -m pytest -q -p no:cacheprovider tests
python3 -m bench.suite --device gpu --name "${1:-gpu}"
