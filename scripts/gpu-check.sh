#!/usr/bin/env bash
# The project's GPU check, in one go, on a machine with an NVIDIA GPU and a CUDA LibTorch (the device
# tool's machine): builds the project against that LibTorch with the kit in ../shared/device (Debian
# packages the machine lacks, and its build recipe), runs the `gpu` and `accelerator` ctest labels (the
# backend contract on CUDA and on the fake accelerator) and the GPU bench, and writes the figures to $OUT
# (or ./gpu-check-out): gpu-tests.txt, gpu-bench.txt, gpu-bench.json, nvidia-smi.txt.
#
#   here:   bash ../shared/device/prepare.sh                 (copies the kit to ./.devkit, git-ignored)
#   there:  device run, carry [".devkit"]:  bash scripts/gpu-check.sh [--mib N]
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root/gpu-check-out}
mkdir -p "$out"
if [ ! -x "$root/.devkit/gpu-build.sh" ] && [ ! -f "$root/.devkit/gpu-build.sh" ]; then
  echo "gpu-check: no .devkit here; run 'bash ../shared/device/prepare.sh' first and carry .devkit" >&2
  exit 2
fi
mib=${2:-2048}
[ "${1:-}" = "--mib" ] || mib=2048
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" > "$out/nvidia-smi.txt"
cd "$root"
bash .devkit/gpu-build.sh -- bash -c "
  ctest -L 'gpu|accelerator' --output-on-failure > '$out/gpu-tests.txt' 2>&1; echo \"ctest rc=\$?\" >> '$out/gpu-tests.txt'
  ./bench/gpu_transfer_bench --mib $mib --json '$out/gpu-bench.json' > '$out/gpu-bench.txt' 2>&1
  echo \"bench rc=\$?\" >> '$out/gpu-bench.txt'
  ./bench/accelerator_stream_bench >> '$out/gpu-bench.txt' 2>&1
  tail -3 '$out/gpu-tests.txt'; cat '$out/gpu-bench.txt'"
