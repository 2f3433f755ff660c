#!/usr/bin/env bash
# Installs the Debian 12 packages the build needs, only those that are missing. Safe to run every time.
# Extra arguments are more packages (the tests add chromium, for the status page's browser test).
set -euo pipefail
packages=(g++ cmake ninja-build ccache libcaf-dev libtorch-dev libboost-dev libspdlog-dev catch2 nlohmann-json3-dev libcli11-dev python3-dev pybind11-dev python3-torch python3-pytest openssl libssl-dev "$@")
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
