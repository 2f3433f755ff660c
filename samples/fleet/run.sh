#!/usr/bin/env bash
# The fleet sample (Note [The fleet], runtime/fleet/router.hpp), on loopback: starts 3 mcache-node
# processes and replays the mixed workload through mcache-router. On the way it kills a first router
# after a few jobs (a router restart: the second one connects to the same nodes), and kills node b with
# SIGKILL when half the second router's jobs are done, then starts it again on its port. Prints each
# node's bytes moved and jobs served, and whether every job finished exactly once, from the router's
# answers and from the nodes' journals. Every process it starts is stopped by its pid.
#
#   bash samples/fleet/run.sh [--sessions N] [--jobs N] [--policy residency|round_robin] [--keep DIR]
# Exit status 0 only if every job of the second router finished exactly once.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${MCACHE_BIN:-$root/build/samples}
sessions=6 jobs=8 policy=residency keep=
while [ $# -gt 0 ]; do
  case $1 in
    --sessions) sessions=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --policy) policy=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
work=${keep:-$(mktemp -d)}
mkdir -p "$work"
declare -A pid
stop_all() {
  for name in "${!pid[@]}"; do
    kill -TERM "${pid[$name]}" 2>/dev/null || true
  done
  for name in "${!pid[@]}"; do
    # a node stops within a few seconds of SIGTERM; past 10 s it is killed
    for _ in $(seq 100); do kill -0 "${pid[$name]}" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "${pid[$name]}" 2>/dev/null || true
    wait "${pid[$name]}" 2>/dev/null || true
  done
  [ -n "$keep" ] || rm -rf "$work"
}
trap stop_all EXIT

start_node() {  # name port(0: any)
  rm -f "$work/$1.port"
  "$bin/mcache-node" --name "$1" --port "$2" --port-file "$work/$1.port" --journal "$work/journal.$1" \
    >>"$work/$1.out" 2>&1 &
  pid[$1]=$!
  for _ in $(seq 300); do [ -s "$work/$1.port" ] && return 0; kill -0 "${pid[$1]}" 2>/dev/null || break; sleep 0.1; done
  echo "run.sh: node $1 did not start:" >&2; cat "$work/$1.out" >&2; exit 1
}
wait_progress() {  # file count pid: until the router printed `count` progress lines (or exited)
  for _ in $(seq 1200); do
    [ "$(grep -c '^progress' "$1" 2>/dev/null || true)" -ge "$2" ] && return 0
    kill -0 "$3" 2>/dev/null || return 0
    sleep 0.05
  done
}

for n in a b c; do start_node $n 0; done
nodes=$(printf '127.0.0.1:%s,127.0.0.1:%s,127.0.0.1:%s' "$(cat "$work/a.port")" "$(cat "$work/b.port")" "$(cat "$work/c.port")")
echo "3 nodes up: $nodes (pids ${pid[a]} ${pid[b]} ${pid[c]})"

# A first router, killed after 3 jobs: its jobs still running finish on the nodes, answered to nobody.
"$bin/mcache-router" --nodes "$nodes" --wait-nodes 3 --sessions "$sessions" --jobs "$jobs" --policy "$policy" \
  --name first --progress >"$work/router1.out" 2>&1 &
pid[router1]=$!
wait_progress "$work/router1.out" 3 "${pid[router1]}"
kill -KILL "${pid[router1]}" 2>/dev/null || true; wait "${pid[router1]}" 2>/dev/null || true; unset 'pid[router1]'
echo "router 'first' killed after $(grep -c '^progress' "$work/router1.out" || true) jobs; starting router 'second'"

"$bin/mcache-router" --nodes "$nodes" --wait-nodes 3 --sessions "$sessions" --jobs "$jobs" --policy "$policy" \
  --name second --progress >"$work/router2.out" 2>&1 &
pid[router2]=$!
total=$((sessions * jobs))
wait_progress "$work/router2.out" $((total / 2)) "${pid[router2]}"
port_b=$(cat "$work/b.port")
kill -KILL "${pid[b]}" 2>/dev/null || true; wait "${pid[b]}" 2>/dev/null || true
echo "node b (pid ${pid[b]}) killed with SIGKILL after $(grep -c '^progress' "$work/router2.out" || true) of $total jobs"
sleep 0.5
start_node b "$port_b"
echo "node b restarted on port $port_b (pid ${pid[b]})"
status=0
wait "${pid[router2]}" || status=$?
unset 'pid[router2]'
sed -n '/^node /,$p' "$work/router2.out"

# The nodes' own account: every key of the second router ended "done" on exactly one node, except a
# key that node b finished just before it was killed (its answer was lost, so it ran again elsewhere).
done_lines=$(cat "$work"/journal.* | grep -c '^second-.* done$' || true)
distinct=$(cat "$work"/journal.* | grep '^second-.* done$' | cut -d' ' -f1 | sort -u | wc -l)
twice=$(cat "$work"/journal.* | grep '^second-.* done$' | cut -d' ' -f1 | sort | uniq -d)
unexplained=0
for k in $twice; do
  grep -q "^$k b done$" "$work/journal.b" || unexplained=$((unexplained + 1))
done
echo "journals: $done_lines done lines for $distinct of $total keys; run twice: $(echo $twice | wc -w) (each after node b was lost), unexplained: $unexplained"
[ "$distinct" -eq "$total" ] && [ "$unexplained" -eq 0 ] || status=1
exit $status
