#!/usr/bin/env bash
# The project's GPU check, in one go, on a machine with an NVIDIA GPU and a CUDA LibTorch (the device
# tool's machine): builds the project against that LibTorch with the kit in ../shared/device (Debian
# packages the machine lacks, and its build recipe), then, each step bounded in time so that one hang
# cannot eat the machine's budget:
#   1. the `gpu` and `accelerator` ctest labels (the backend contract on CUDA and on the fake accelerator),
#   2. the GPU bench (gpu_transfer_bench: pin vs plain copy, offload, streaming, disk) and the stream bench,
#   3. the Python package's tests (ctest label `python`: with that machine's torch, a CUDA case runs),
#   4. the main sample on its default, which is every GPU LibTorch sees,
#   5. if time is left, the rest of the suite against the CUDA LibTorch.
# The kit has no libcaf_openssl, so the fleet (nodes, routers, their tests) is not built there: CMake says
# so and builds the rest (MCACHE_BUILD_FLEET=AUTO).
# A build error does not stop it: the build goes on with `-k 0`, its errors go to build-errors.txt, and
# whatever did build still runs. Figures go to $OUT (or ./gpu-check-out): nvidia-smi.txt, build-errors.txt,
# gpu-tests.txt, gpu-bench.txt, gpu-bench.json, python.txt, sample.txt, other-tests.txt.
#
#   here:   bash ../shared/device/prepare.sh                 (copies the kit to ./.devkit, git-ignored)
#   there:  device run, carry [".devkit"], timeout_s 600:  bash scripts/gpu-check.sh [--mib N]
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root/gpu-check-out}
mkdir -p "$out"
if [ ! -f "$root/.devkit/gpu-build.sh" ]; then
  echo "gpu-check: no .devkit here; run 'bash ../shared/device/prepare.sh' first and carry .devkit" >&2
  exit 2
fi
mib=2048
[ "${1:-}" = "--mib" ] && mib=${2:-2048}
budget_s=${GPU_CHECK_BUDGET_S:-570}   # the device tool's limit per command is 600 s
step() {  # step NAME SECONDS COMMAND...: runs COMMAND for at most SECONDS (less if the budget is short)
  local name=$1 limit=$2; shift 2
  local left=$((budget_s - SECONDS))
  ((left < limit)) && limit=$left
  if ((limit < 10)); then echo "gpu-check: no time left for $name" | tee -a "$out/skipped.txt"; return 0; fi
  echo "== $name (at ${SECONDS}s, limit ${limit}s)"
  timeout --kill-after=5 "$limit" "$@"
  local rc=$?
  echo "== $name: rc=$rc after ${SECONDS}s"
  return 0
}
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" > "$out/nvidia-smi.txt"
cd "$root"
bash .devkit/gpu-build.sh -- true > "$out/build.txt" 2>&1
build_rc=$?
if ((build_rc != 0)); then
  cp /tmp/cmake.log "$out/cmake.log" 2>/dev/null
  # Keep going past the first error: every error in one run, and every target that does build.
  cmake --build /tmp/build -j 16 -- -k 0 > /tmp/build-k0.log 2>&1
  { grep -E "^FAILED" /tmp/build-k0.log; echo; grep -E "error" -B2 -A6 /tmp/build-k0.log | head -600; } > "$out/build-errors.txt"
fi
echo "build rc=$build_rc after ${SECONDS}s" | tee -a "$out/build.txt"
[ -d /tmp/build ] || exit 3
export LD_LIBRARY_PATH="/tmp/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
cd /tmp/build
step "gpu and accelerator tests" 200 ctest -L 'gpu|accelerator' --timeout 120 --output-on-failure > "$out/gpu-tests.txt" 2>&1
tail -4 "$out/gpu-tests.txt"
{
  step "gpu_transfer_bench" 120 ./bench/gpu_transfer_bench --mib "$mib" --json "$out/gpu-bench.json"
  step "accelerator_stream_bench" 45 ./bench/accelerator_stream_bench
  step "multi_device_bench on CUDA" 45 ./bench/multi_device_bench --device cuda --mib 1024
} > "$out/gpu-bench.txt" 2>&1
cat "$out/gpu-bench.txt"
step "the Python package" 90 ctest -L python --output-on-failure -V > "$out/python.txt" 2>&1
grep -E "passed|failed|skipped|not built|no pytest|pybind11|No tests" "$out/python.txt" /tmp/cmake.log 2>/dev/null | tail -8
step "pipeline_sessions on the GPU" 75 ./samples/pipeline_sessions > "$out/sample.txt" 2>&1
tail -30 "$out/sample.txt"
step "the rest of the suite" 200 ctest -LE 'gpu|accelerator|python|package|browser' -j 8 --timeout 100 --output-on-failure > "$out/other-tests.txt" 2>&1
grep -E "tests passed|\*\*\*|Test #" "$out/other-tests.txt" | grep -vE "Passed" | tail -25
# What this LibTorch exports of libstdc++'s std::filesystem (see runtime/core/models/folder_walk.hpp).
torch_lib=$(python3 -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))" 2>/dev/null)
[ -n "$torch_lib" ] && nm -D --defined-only "$torch_lib/libtorch_cpu.so" 2>/dev/null | c++filt | grep "std::filesystem" > "$out/torch-filesystem-symbols.txt"
echo "gpu-check: done after ${SECONDS}s"
