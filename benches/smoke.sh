#!/usr/bin/env bash
# Smoke run of every load scenario (CI): a few hundred connections and a few rounds each,
# against phx-threads and, when node is installed, the Socket.IO peer too. Checks only that
# every scenario ran and reported (its CSV has a data row; `rest` and `slowbody` may report
# SKIPPED when the server cannot start its own PostgreSQL), never the numbers. Then the
# `cluster` scenario (three nodes on a throwaway PostgreSQL, 300 clients from three generator
# processes, two ceiling steps per batch window; about 20 s), which needs the PostgreSQL
# server binaries (.ci/run installs them) and so is not part of `all`.
set -euo pipefail
cd "$(dirname "$0")/.."

out=bench-results/smoke
rm -rf "$out"
peer=()
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  peer=(--peer socketio)
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$(date +%s)
status=0
cargo bench --locked --bench load -- all --smoke "${peer[@]}" --out "$out" 2>&1 | tee "$log" || status=$?
echo "smoke: scenarios took $(( $(date +%s) - start )) s (including the build)"
cstart=$(date +%s)
cluster_status=0
cargo bench --locked --bench load -- cluster --smoke --out "$out" 2>&1 | tee -a "$log" || cluster_status=$?
echo "smoke: cluster took $(( $(date +%s) - cstart )) s"
[ "$cluster_status" -ne 0 ] && status=$cluster_status

fail=0
check() { # file, minimum data rows
  local rows
  rows=$(( $(wc -l < "$1" 2>/dev/null || echo 0) - 1 ))
  if [ "$rows" -lt "$2" ]; then
    echo "smoke: FAIL: $1 has $rows data rows, want >= $2"
    fail=1
  fi
}
servers=1
[ ${#peer[@]} -gt 0 ] && servers=2
check "$out/scaling.csv" $((2 * servers))
check "$out/fanout.csv" $((2 * servers))
check "$out/sustained.csv" 1
check "$out/slow.csv" 2
if ! grep -q '^rest: SKIPPED' "$log"; then
  check "$out/rest.csv" 4
fi
if ! grep -q '^slowbody: SKIPPED' "$log"; then
  check "$out/slowbody.csv" 4
fi
check "$out/cluster.csv" 9
check "$out/cluster_hold.csv" 1
check "$out/cluster_nodes.csv" 3
check "$out/cluster_ceiling.csv" 4
if grep -q '\*\*no\*\*' "$out/cluster.csv"; then
  echo "smoke: FAIL: the cluster smoke missed a target (lost or dropped messages?):"
  grep '\*\*no\*\*' "$out/cluster.csv"
  fail=1
fi
[ -s "$out/scaling.svg" ] || { echo "smoke: FAIL: no $out/scaling.svg"; fail=1; }

# reconnect (issue #13 item 8): PostgreSQL + 3 clustered nodes, 200 phoenix.js-like clients, one
# rolling-restart step (node 0). The scenario itself fails when a client is not joined again,
# Presence does not show all 200 again, or a receiver on a node that stayed up lost a broadcast.
reconnect_start=$(date +%s)
timeout --kill-after=10 120 cargo bench --locked --bench load -- reconnect --smoke --out "$out" 2>&1 \
  | tee -a "$log" || { echo "smoke: FAIL: reconnect exited non-zero"; fail=1; }
echo "smoke: reconnect took $(( $(date +%s) - reconnect_start )) s"
check "$out/reconnect.csv" 1
if pgrep -f "target/release/phx-threads serve" >/dev/null || pgrep -f "benches/peer/server.js" >/dev/null \
  || pgrep -f "phx-bench-pg-" >/dev/null; then
  echo "smoke: FAIL: a server outlived the bench"
  fail=1
fi
if [ "$status" -ne 0 ] || [ "$fail" -ne 0 ]; then
  echo "smoke: FAILED (bench exit $status)"
  exit 1
fi
echo "smoke: 8 passed, 0 failed"
