#!/usr/bin/env bash
# Builds the safetensors fuzz target with clang and runs it for a while (default 30 s) from the committed
# corpus of bad files. Usage: bash scripts/fuzz.sh [SECONDS]. New inputs go to build-fuzz/corpus, crashes
# to build-fuzz/ (crash-*), never into the committed corpus.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-30}
bash "$root/scripts/deps.sh"
command -v clang++ >/dev/null || { sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo; $sudo apt-get install -y -qq clang >/dev/null; }
cmake -S "$root" -B "$root/build-fuzz" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
  -DMCACHE_BUILD_FUZZ=ON -DMCACHE_BUILD_TESTS=OFF -DMCACHE_BUILD_SAMPLES=OFF -DMCACHE_BUILD_BENCH=OFF >/dev/null
cmake --build "$root/build-fuzz" --target safetensors_fuzz
mkdir -p "$root/build-fuzz/corpus"
cd "$root/build-fuzz"
./safetensors_fuzz -max_total_time="$seconds" -print_final_stats=1 corpus "$root/tests/fuzz/corpus"
