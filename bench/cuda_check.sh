#!/usr/bin/env bash
# One prepared GPU check for the cuda backend (about 4-6 minutes on an H100):
#   1. builds xsil with XSIL_CUDA=on for sm_90 only, without build isolation (no network needed:
#      pybind11, scikit-build-core, cmake, ninja, numpy must be installed; PyTorch for the baseline),
#   2. runs the CUDA tests (kernels vs the CPU core, the backend, the conformance suite),
#   3. benchmarks Q4_0 / Q8_0 / Q4_K GEMV bandwidth vs a device-to-device copy, the prefill GEMM
#      (dp4a vs tensor-core mma, M = 16 / 128 / 512), decode tok/s on the TinyLlama-shaped synthetic
#      model vs an fp16 PyTorch matmul chain, and a 512-token prefill with mma on / off
#      (bench/cuda_bench.py).
# Output goes to stdout and, when $OUT is set (the device tool), to $OUT/cuda_check.log.
# SANITIZE=1 also runs the kernel tests under compute-sanitizer memcheck (adds minutes).
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${OUT:-/tmp}/cuda_check.log
exec > >(tee "$LOG") 2>&1
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 XSIL_CACHE_DIR=${XSIL_CACHE_DIR:-/tmp/xsil-cache} CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
echo "== $(date -u) =="
nvidia-smi -L || true
nvcc --version | tail -1 || true
$PY -c "import sys, numpy; print(sys.version.split()[0], 'numpy', numpy.__version__)"

echo "== build (XSIL_CUDA=on, sm_90) =="
t0=$(date +%s)
SRC=$PWD
if ! XSIL_CUDA=on XSIL_CUDA_ARCHS=90-real $PY -m pip install -q --no-build-isolation --no-deps --no-index . \
    >/tmp/xsil-pip.log 2>&1; then
  grep -E "Error|error:" /tmp/xsil-pip.log | tail -3
  # No scikit-build-core (or pip refuses): build the two extensions with CMake and assemble the
  # package by hand on PYTHONPATH, as the wheel would lay it out.
  echo "pip build failed; falling back to a plain CMake build"
  PB=$($PY -c "import pybind11; print(pybind11.get_cmake_dir())") || { echo "BUILD FAILED (no pybind11)"; exit 1; }
  cmake -S . -B /tmp/xsil-build -G Ninja -DCMAKE_BUILD_TYPE=Release -DXSIL_BUILD_PYTHON=ON -DXSIL_CUDA=on \
    -DXSIL_CUDA_ARCHS=90-real -Dpybind11_DIR="$PB" -DPython_EXECUTABLE="$(command -v $PY)" >/tmp/xsil-cmake.log 2>&1 \
    && cmake --build /tmp/xsil-build --target _core _cuda -j 16 >/tmp/xsil-build.log 2>&1 \
    || { tail -30 /tmp/xsil-cmake.log /tmp/xsil-build.log; echo "BUILD FAILED"; exit 1; }
  rm -rf /tmp/xsil-pkg && mkdir -p /tmp/xsil-pkg && cp -r python/xsil /tmp/xsil-pkg/ && cp -r backends /tmp/xsil-pkg/xsil/backends
  cp /tmp/xsil-build/_core*.so /tmp/xsil-build/_cuda*.so /tmp/xsil-pkg/xsil/
  export PYTHONPATH=/tmp/xsil-pkg
fi
echo "build took $(( $(date +%s) - t0 )) s"
# run from outside the source tree so the built package (with _cuda) is the one imported
cd /tmp
$PY -c "import xsil, sys; print('cuda imported by import xsil:', 'xsil._cuda' in sys.modules); from xsil import registry; print(registry.probe('cuda'))"

echo "== tests =="
timeout 150 $PY -m pytest -q -p no:cacheprovider --tb=short -rfE "$SRC/tests/kernels/test_cuda_kernels.py" "$SRC/tests/kernels/test_cuda_kv.py" "$SRC/tests/backends/test_cuda.py" 2>&1 | tail -80
timeout 90 $PY -m pytest -q -p no:cacheprovider --tb=short -rfE "$SRC/tests/backends/test_conformance.py" -k cuda 2>&1 | tail -30

if [ "${SANITIZE:-0}" = 1 ] && command -v compute-sanitizer >/dev/null; then
  echo "== compute-sanitizer memcheck (kernel tests, slow) =="
  timeout 240 compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m pytest -q -p no:cacheprovider -x \
    "$SRC/tests/kernels/test_cuda_kernels.py" 2>&1 | tail -30
fi

echo "== bench =="
timeout 200 $PY "$SRC/bench/cuda_bench.py"
echo "== done $(date -u) =="
