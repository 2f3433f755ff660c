#!/usr/bin/env bash
# Configures and builds into ./build (Ninja, RelWithDebInfo). Extra arguments are build targets.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/deps.sh"
launcher=(); command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S "$root" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE="${MCACHE_BUILD_TYPE:-RelWithDebInfo}" "${launcher[@]}" >/dev/null
# Two jobs per core at most: LibTorch headers take ~1 GB per compiler.
cmake --build "$root/build" --parallel "$(nproc)" ${1:+--target "$@"}
