#!/usr/bin/env bash
# Installs what is missing, builds, and runs the pipeline sample (simulated devices). Arguments go to the
# sample, e.g. `bash scripts/sample.sh --sessions 8 --devices 3`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/build.sh" pipeline_sessions
exec "$root/build/samples/pipeline_sessions" "$@"
