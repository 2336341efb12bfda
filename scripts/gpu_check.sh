#!/usr/bin/env bash
# GPU check: run on a machine with an NVIDIA GPU, from the project root, with
# that machine's own python3 (its torch, triton and torchvision; nothing is
# installed, the machine may have no network).
#
#   scripts/gpu_check.sh [OUTPUT_DIR]      (default: $OUT, else ./gpu_check_out)
#
# 1. builds fastops._C in place against that torch, for this GPU's architecture
# 2. runs the GPU tests (pytest -m cuda)
# 3. runs them again under compute-sanitizer --tool memcheck
# 4. runs the benchmarks (python -m bench), writing bench/results/<gpu>.{json,md,png}
# 5. runs the CPU test suite against that machine's torch and triton
# and writes logs and copies of the result tables to OUTPUT_DIR, with a short
# summary printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$out"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

declare -A status
step() {  # step NAME COMMAND...: runs and logs a step, records its exit status
  local name="$1"
  shift
  echo "=== $name: $*"
  local start=$SECONDS
  "$@" >"$out/$name.log" 2>&1
  status[$name]=$?
  echo "=== $name: exit ${status[$name]} after $((SECONDS - start)) s (log: $out/$name.log)"
  tail -n 25 "$out/$name.log"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/gpu.txt" 2>&1
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())" >>"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"

arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
# The triton_kernels directory is packaged as fastops.triton_kernels; without
# an install, a link inside fastops/ serves the same import.
[ -e fastops/triton_kernels ] || ln -s ../triton_kernels fastops/triton_kernels
step build env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$(nproc)" "$PY" setup.py build_ext --inplace
# Triton compiles for the GPU here (tests/conftest.py defaults to the interpreter).
export TRITON_INTERPRET=0
step tests "$PY" -m pytest -m cuda -q -p no:cacheprovider -o addopts="-ra"
step sanitizer compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" -m pytest -m cuda -q -p no:cacheprovider \
  -o addopts="-ra" -k "not compile and not gradcheck"
step bench "$PY" -m bench --device cuda
# The CPU suite too, against this machine's (older) torch and triton.
# pytest-xdist, where that machine has it, spreads the CPU suite over 8 processes.
xdist=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 8")
step cpu-tests env TRITON_INTERPRET=1 "$PY" -m pytest -m "not cuda and not slow" -q -p no:cacheprovider -o addopts="-ra" $xdist
cp bench/results/*.md bench/results/*.json "$out"/ 2>/dev/null

echo
echo "=== summary ($(head -n 2 "$out/gpu.txt" | tail -n 1))"
for name in build tests sanitizer bench cpu-tests; do
  printf '%-10s %s\n' "$name" "$([ "${status[$name]:-1}" = 0 ] && echo ok || echo "FAILED (exit ${status[$name]:-not run})")"
done
grep -E "passed|failed" "$out/tests.log" | tail -n 1
grep -E "ERROR SUMMARY" "$out/sanitizer.log" | tail -n 1
exit $(( ${status[build]:-1} + ${status[tests]:-1} ))
