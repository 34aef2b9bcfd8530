#!/usr/bin/env bash
# GPU check of the CUDA smoothing kernel -- ONE command for a lent GPU machine (nothing to install there):
#
#   bash benchmarks/gpu_check.sh            # full run (a few minutes)
#   bash benchmarks/gpu_check.sh --quick    # smoke run
#
# 1. nvcc builds the C launcher (ncis_deploy/csrc/gaussian_smooth.cu, the TensorRT plugin's code path) as a shared
#    library for this GPU's architecture;
# 2. benchmarks/gpu_kernels.py compiles the same source through NVRTC (ncis_deploy.kernels), checks both paths
#    against the float64 PyTorch reference on fresh random inputs (odd sizes, every radius path, chunked plans,
#    float32 <= 1e-5, float16 <= 1e-3, NaN-poisoned outputs), measures the copy bandwidth and times the kernel
#    against T iterations of torch conv2d (T = 1, 3, 10; batch 1, 64; 224², 512²) with CUDA events;
# 3. the gpu-marked tests of tests/test_kernels.py run too.
# Results: gpu-kernels-<device>.json in $OUT (when set) and in benchmarks/results/. Exit 1 on any correctness
# failure; the speed goals are reported in the final table, not enforced.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # the project from this checkout, not installed

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem \
  --format=csv || echo "nvidia-smi not available"
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "error: PyTorch sees no CUDA GPU")'
CC="$("$PY" -c 'import torch; print("".join(map(str, torch.cuda.get_device_capability())))')"

BUILD="$(mktemp -d)"
trap 'rm -rf "$BUILD"' EXIT
LIB="$BUILD/libncis_gs.so"
if command -v nvcc >/dev/null; then
  echo "nvcc: building the C launcher for sm_$CC"
  nvcc -O3 -std=c++17 -shared -Xcompiler -fPIC -gencode "arch=compute_$CC,code=sm_$CC" -Xptxas -v \
    ncis_deploy/csrc/gaussian_smooth.cu -o "$LIB" 2> "$BUILD/ptxas.txt" || { cat "$BUILD/ptxas.txt"; exit 1; }
  grep -E "Function properties|registers|spill" "$BUILD/ptxas.txt" | head -32 || true
  LAUNCHER=(--launcher-lib "$LIB")
else
  echo "nvcc not found: only the NVRTC path is checked"
  LAUNCHER=()
fi

OUTS=(--out benchmarks/results)
if [ -n "${OUT:-}" ]; then OUTS+=(--out "$OUT"); fi
status=0
"$PY" benchmarks/gpu_kernels.py ${LAUNCHER[@]+"${LAUNCHER[@]}"} "${OUTS[@]}" "$@" || status=$?

echo "pytest: gpu-marked kernel tests"
"$PY" -m pytest -q -m gpu tests/test_kernels.py -p no:cacheprovider || status=1
exit "$status"
