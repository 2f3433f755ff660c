#!/usr/bin/env bash
# The status page in a real browser (ctest label `browser`): runs the scheduler sample with its HTTP
# endpoint, loads the page in headless Chromium while jobs run, checks that the page's script drew every
# tier with the sample's models, and takes a screenshot.
# Usage: browser_test.sh SAMPLE_BINARY OUT_DIR
set -euo pipefail
sample=$1
out=$2
mkdir -p "$out"
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
  echo "browser test: chromium is not installed (scripts/test.sh installs it: apt-get install chromium)" >&2
  exit 1
fi
log="$out/sample.log"
"$sample" --order fifo --quiet --http 0 --timelines "$out" > "$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
url=""
for _ in $(seq 1 100); do
  url=$(grep -o 'status page at http://[0-9.:]*/' "$log" | head -1 | sed 's/status page at //' || true)
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "browser test: the sample never printed its status page URL"; cat "$log"; exit 1; }
sleep 2  # let jobs start, so that models are resident and held
flags=(--headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --hide-scrollbars
       --user-data-dir="$out/profile" --virtual-time-budget=3000)
timeout 60 "$browser" "${flags[@]}" --dump-dom "$url" > "$out/dom.html" 2> "$out/chromium.log" || true
for want in 'data-tier="RAM"' 'data-tier="device 0"' 'data-tier="CPU pins"' 'class="model">clip_l<' 'models in the catalog'; do
  if ! grep -q "$want" "$out/dom.html"; then
    echo "browser test: the page as Chromium drew it lacks: $want"
    head -c 3000 "$out/dom.html"; echo; tail -20 "$out/chromium.log"
    exit 1
  fi
done
timeout 60 "$browser" "${flags[@]}" --window-size=1280,900 --screenshot="$out/status-page.png" "$url" \
  > /dev/null 2>> "$out/chromium.log" || true
size=$(stat -c %s "$out/status-page.png" 2>/dev/null || echo 0)
[ "$size" -gt 20000 ] || { echo "browser test: no screenshot (size $size)"; tail -20 "$out/chromium.log"; exit 1; }
echo "browser test: the page drew every tier with the sample's models; screenshot $out/status-page.png ($size bytes)"
