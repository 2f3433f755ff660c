#!/usr/bin/env bash
# Runs actor_tests, runtime_tests (the stress test included), the simulated backend contract, the scheduler,
# the fake accelerator's and the CAF-free core's tests under ThreadSanitizer, with CAF itself
# instrumented too: Debian's libcaf is not, so TSan would not see the synchronisation inside its mailboxes
# and scheduler. Usage: bash scripts/tsan.sh [CATCH_FILTER...] (the filters go to every test binary).
#  1. Takes CAF 0.17.6's source from Debian's source package (actor-framework), adding a deb-src entry
#     if apt knows none, into .cache/tsan/src.
#  2. Builds libcaf_core and libcaf_io with -fsanitize=thread into .cache/tsan/caf-install, once: later
#     runs reuse it (delete .cache/tsan/caf-install to rebuild it).
#  3. Configures this project into build-tsan/ against that install (RPATH to it, checked with ldd) and
#     builds only those test targets.
#  4. Runs them with TSAN_OPTIONS (plus scripts/tsan.supp), counts the "WARNING: ThreadSanitizer"
#     reports and prints the first one's summary. Exits non-zero on any report or failed test.
# Logs: build-tsan/tsan-actor_tests.log and build-tsan/tsan-runtime_tests.log. Needs root or sudo only
# for apt. MCACHE_TSAN_JOBS sets the build's parallelism (default: nproc).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache="$root/.cache/tsan"
caf_version=0.17.6
caf_debian_version=0.17.6-2.1
caf_src="$cache/src/actor-framework-$caf_version"
caf_build="$cache/caf-build"
caf_prefix="$cache/caf-install"
build="$root/build-tsan"
tsan_flags="-fsanitize=thread -g -O1"
jobs=${MCACHE_TSAN_JOBS:-$(nproc)}
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

bash "$root/scripts/deps.sh"
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
installed dpkg-dev || DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dpkg-dev >/dev/null
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)

# ---- 1 and 2: an instrumented CAF, built once ------------------------------------------------------
stamp="$caf_prefix/.mcache-tsan-stamp"
stamp_text="actor-framework $caf_debian_version, CXXFLAGS=-std=c++14 $tsan_flags"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_text" ] && [ -e "$caf_prefix/lib/libcaf_core.so" ] &&
  [ -e "$caf_prefix/lib/libcaf_io.so" ] && [ -e "$caf_prefix/include/caf/all.hpp" ]; then
  echo "tsan: reusing the instrumented CAF in ${caf_prefix#"$root"/}"
else
  if ! apt-cache showsrc actor-framework 2>/dev/null | grep -qx "Version: $caf_debian_version"; then
    if ! grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      echo "tsan: adding a deb-src entry (/etc/apt/sources.list.d/mcache-src.sources)"
      printf '%s\n' "Types: deb-src" "URIs: http://deb.debian.org/debian" "Suites: bookworm" "Components: main" \
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" |
        $sudo tee /etc/apt/sources.list.d/mcache-src.sources >/dev/null
    fi
    $sudo apt-get update -qq
  fi
  mkdir -p "$cache/src"
  if [ ! -f "$caf_src/CMakeLists.txt" ]; then
    (
      cd "$cache/src"
      dsc="actor-framework_$caf_debian_version.dsc"
      orig="actor-framework_$caf_version.orig.tar.gz"
      # Downloads the .dsc, the upstream tarball and Debian's packaging; apt checks each against the
      # signed Sources index. Some mirrors lack the small debian.tar.xz: then use the upstream tarball alone.
      apt-get source --download-only "actor-framework=$caf_debian_version" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true
      [ -f "$dsc" ] && [ -f "$orig" ] || { echo "tsan: apt-get source actor-framework failed" >&2; exit 1; }
      if [ -f "actor-framework_$caf_debian_version.debian.tar.xz" ]; then
        dpkg-source -x "$dsc" "actor-framework-$caf_version" >/dev/null
      else
        echo "tsan: Debian's packaging (debian.tar.xz) is missing on this mirror: using the upstream tarball"
        want=$(awk -v f="$orig" '/^Checksums-Sha256:/{s=1; next} /^[^ ]/{s=0} s && $3==f {print $1}' "$dsc")
        echo "$want  $orig" | sha256sum -c --quiet - || { echo "tsan: $orig does not match $dsc" >&2; exit 1; }
        tar xzf "$orig"
      fi
    )
  fi
  # Debian's "build with recent gcc" patch, for when its packaging was missing: the one header in which
  # Debian's installed CAF differs from upstream 0.17.6. A no-op when the patch is already applied.
  rb="$caf_src/libcaf_io/caf/io/network/receive_buffer.hpp"
  grep -q '#include <limits>' "$rb" || sed -i 's|#include <cstring>|&\n#include <limits>|' "$rb"
  echo "tsan: building an instrumented libcaf_core and libcaf_io (once; a few minutes)"
  rm -rf "$caf_build" "$caf_prefix"
  # Build type None: CAF adds no flags of its own. C++14 as in Debian's build. Only core and io.
  cmake -S "$caf_src" -B "$caf_build" -G Ninja -Wno-dev "${launcher[@]}" -DCMAKE_BUILD_TYPE=None \
    -DCMAKE_CXX_FLAGS="-std=c++14 $tsan_flags" -DCMAKE_SHARED_LINKER_FLAGS=-fsanitize=thread \
    -DCMAKE_INSTALL_PREFIX="$caf_prefix" -DCMAKE_INSTALL_LIBDIR=lib -DCMAKE_INSTALL_RPATH="$caf_prefix/lib" \
    -DCAF_NO_OPENSSL=yes -DCAF_NO_OPENCL=yes -DCAF_NO_PYTHON=yes -DCAF_NO_TOOLS=yes -DCAF_NO_EXAMPLES=yes \
    -DCAF_NO_UNIT_TESTS=yes -DCAF_NO_SUMMARY=yes -DCAF_NO_COMPILER_CHECK=yes >/dev/null
  cmake --build "$caf_build" --parallel "$jobs"
  cmake --install "$caf_build" >/dev/null
  echo "$stamp_text" >"$stamp"
fi

# ---- 3: the project's two actor test binaries against it ---------------------------------------------
# NDEBUG as in the default RelWithDebInfo build, but -O1 (from CMAKE_CXX_FLAGS) instead of -O2. No fleet:
# the instrumented CAF has no libcaf_openssl, and the system's would bring the uninstrumented core along.
cmake -S "$root" -B "$build" -G Ninja "${launcher[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS="$tsan_flags" -DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-DNDEBUG \
  -DCMAKE_EXE_LINKER_FLAGS=-fsanitize=thread -DMCACHE_BUILD_SAMPLES=OFF -DMCACHE_BUILD_BENCH=OFF -DMCACHE_BUILD_PYTHON=OFF -DMCACHE_BUILD_FLEET=OFF \
  -DCAF_INCLUDE_DIR="$caf_prefix/include" -DCAF_CORE_LIBRARY="$caf_prefix/lib/libcaf_core.so" \
  -DCAF_IO_LIBRARY="$caf_prefix/lib/libcaf_io.so" -DCMAKE_BUILD_RPATH="$caf_prefix/lib" >/dev/null
cmake --build "$build" --parallel "$jobs" --target actor_tests runtime_tests contract_simulated_tests scheduler_tests core_tests \
  accelerator_tests contract_accelerator_tests
# The fake accelerator's tests too: its streams are threads of ours, so TSan sees a copy or a free that is
# not ordered after what it must wait for (LibTorch itself is not instrumented).
caf_tests=(actor_tests runtime_tests contract_simulated_tests scheduler_tests accelerator_tests contract_accelerator_tests)
tests=("${caf_tests[@]}" core_tests)  # core_tests: the CAF-free core (the buffer cache's threads test)
caf_lib=$(readlink -f "$caf_prefix/lib/libcaf_core.so")
for t in "${caf_tests[@]}"; do
  caf_used=$(ldd "$build/tests/$t" | awk '$1 ~ /^libcaf_core/ {print $3}')
  if [ -z "$caf_used" ] || [ "$(readlink -f "$caf_used")" != "$caf_lib" ]; then
    echo "tsan: $t would load ${caf_used:-no libcaf_core}, not the instrumented $caf_lib" >&2
    exit 1
  fi
done

# ---- 4: run, count, summarise -----------------------------------------------------------------------
options="halt_on_error=0 second_deadlock_stack=1 report_signal_unsafe=0"
[ -f "$root/scripts/tsan.supp" ] && options+=" suppressions=$root/scripts/tsan.supp"
export TSAN_OPTIONS="$options ${TSAN_OPTIONS:-}"
failed=()
logs=()
for t in "${tests[@]}"; do
  log="$build/tsan-$t.log"
  logs+=("$log")
  echo "tsan: running $t $*"
  set +e
  "$build/tests/$t" "$@" >"$log" 2>&1
  rc=$?
  set -e
  grep -E '^(All tests passed|test cases:|No test cases matched)' "$log" || true
  # TSan turns the exit status into 66 when it reported anything: Catch's own verdict is then in the log.
  if [ "$rc" -ne 0 ] && ! { [ "$rc" -eq 66 ] && grep -q '^All tests passed' "$log"; }; then
    failed+=("$t (exit $rc)")
  fi
done
count=$(cat "${logs[@]}" | grep -c 'WARNING: ThreadSanitizer' || true)
echo "tsan: $count ThreadSanitizer report(s)"
if [ "$count" -gt 0 ]; then
  echo "tsan: report kinds:"
  cat "${logs[@]}" | grep '^SUMMARY: ThreadSanitizer' | sort | uniq -c | sort -rn | head -20
  echo "tsan: the first report, each stack's top frames:"
  # Between the first WARNING and its SUMMARY: each section's heading and its first three frames.
  cat "${logs[@]}" | awk '
    /WARNING: ThreadSanitizer/ && !seen { seen = 1; on = 1 }
    !on { next }
    /^ *#[0-9]+ / { if (++frames <= 3) print; next }
    /^ *$/ { next }
    { frames = 0; print }
    /^SUMMARY: ThreadSanitizer/ { exit }'
fi
((${#failed[@]})) && echo "tsan: failed: ${failed[*]}"
[ "$count" -eq 0 ] && ((${#failed[@]} == 0))
