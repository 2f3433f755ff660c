#!/usr/bin/env bash
# Note [Packaging], tested (ctest label `package`): builds and runs tests/package/ against mcache installed
# into a fresh prefix (find_package), then through add_subdirectory. The second build recompiles mcache
# in another folder; ccache (with paths made relative) serves what the main build compiled.
# Usage: package_test.sh SOURCE_DIR BUILD_DIR WORK_DIR
set -euo pipefail
src=$1
build=$2
work=$3
rm -rf "$work"
mkdir -p "$work"
launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  export CCACHE_BASEDIR="$src" CCACHE_NOHASHDIR=1
fi
type=$(grep -E '^CMAKE_BUILD_TYPE:' "$build/CMakeCache.txt" | cut -d= -f2)
echo "== installing into $work/prefix"
cmake --install "$build" --prefix "$work/prefix" > "$work/install.log"
test -f "$work/prefix/include/mcache/runtime/runtime.hpp"
test -f "$work/prefix/lib/cmake/mcache/mcacheConfig.cmake"
echo "== find_package(mcache) from the prefix"
cmake -S "$src/tests/package" -B "$work/installed" -G Ninja -DCMAKE_BUILD_TYPE="$type" "${launcher[@]}" \
  -DCMAKE_PREFIX_PATH="$work/prefix" > "$work/installed.log"
cmake --build "$work/installed" >> "$work/installed.log"
"$work/installed/consumer"
echo "== add_subdirectory(mcache)"
cmake -S "$src/tests/package" -B "$work/subdir" -G Ninja -DCMAKE_BUILD_TYPE="$type" "${launcher[@]}" \
  -DMCACHE_SOURCE_DIR="$src" > "$work/subdir.log"
cmake --build "$work/subdir" --parallel "$(nproc)" >> "$work/subdir.log"
"$work/subdir/consumer"
echo "package test: both ways work"
