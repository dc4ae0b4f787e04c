#!/usr/bin/env bash
# Compile-check the torch-free CUDA kernels of native/ops for Jetson Orin (sm_87) and Hopper (sm_90).
# Usage: native/ops/check_cuda.sh          (NVCC=/path/to/nvcc to pick a compiler)
# Exits 0 with a message when nvcc is not installed; non-zero when a kernel fails to compile.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
nvcc="${NVCC:-}"
if [[ -z "$nvcc" ]]; then
  if command -v nvcc >/dev/null 2>&1; then nvcc="$(command -v nvcc)";
  elif [[ -x /usr/local/cuda/bin/nvcc ]]; then nvcc=/usr/local/cuda/bin/nvcc;
  fi
fi
if [[ -z "$nvcc" ]]; then
  echo "check_cuda: nvcc not found, skipping the CUDA compile check"
  exit 0
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
echo "check_cuda: $("$nvcc" --version | tail -n 1)"
status=0
for src in "$here"/*.cu; do
  name="$(basename "$src" .cu)"
  # The -D flags are the ones torch's extension builder passes to nvcc; the kernels must not rely
  # on implicit half/bfloat16 conversions or operators.
  if "$nvcc" -c "$src" -o "$out/$name.o" -std=c++17 -O3 -Werror all-warnings -Xcompiler -Wall \
      -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
      -D__CUDA_NO_HALF2_OPERATORS__ \
      -gencode arch=compute_87,code=sm_87 -gencode arch=compute_90,code=sm_90; then
    echo "check_cuda: ok   $name.cu (sm_87, sm_90)"
  else
    echo "check_cuda: FAIL $name.cu"
    status=1
  fi
done
exit $status
