#!/usr/bin/env bash
# Property-based API testing: runs Schemathesis against openapi.yaml and a live server.
#
# Starts the real binary (`phx-threads serve`, with a throwaway private PostgreSQL) on a free
# port, installs Schemathesis into a venv, and runs
# every check with a bounded number of examples (well under 3 minutes on 2 cores).
# Exits non-zero if any check fails.
#
# Environment:
#   SCHEMATHESIS_VERSION  pip requirement (default: schemathesis==4.32.5, the version this
#                         script was written against; newer ones add checks)
#   MAX_EXAMPLES          examples per operation and phase (default 100)
#   VENV                  where to create the venv (default: target/schemathesis-venv)
#   DATABASE_URL          use this database instead of a throwaway cluster (its
#                         superheroes table gets written to)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

SCHEMATHESIS_VERSION="${SCHEMATHESIS_VERSION:-schemathesis==4.32.5}"
MAX_EXAMPLES="${MAX_EXAMPLES:-100}"
VENV="${VENV:-$ROOT/target/schemathesis-venv}"
WORK="$(mktemp -d /tmp/phx-schemathesis.XXXXXX)"
# When run as root, PostgreSQL runs as the `postgres` user, which must be able to enter it.
chmod 755 "$WORK"
SERVER_PID=""

cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID"
        # The server stops its PostgreSQL on SIGTERM; wait for it, bounded.
        for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "--- building the server"
cargo build --quiet --locked --bin phx-threads

echo "--- installing $SCHEMATHESIS_VERSION into $VENV"
if [[ ! -x "$VENV/bin/schemathesis" ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$SCHEMATHESIS_VERSION"
fi
"$VENV/bin/schemathesis" --version

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
BASE="http://127.0.0.1:$PORT"

echo "--- starting the server on $BASE"
# --rest-write-rate 0: schemathesis sends hundreds of writes a second from one address.
"$ROOT/target/debug/phx-threads" serve --ws-addr 127.0.0.1:0 --http-addr "127.0.0.1:$PORT" --rest-write-rate 0 \
    --data-dir "$WORK" ${DATABASE_URL:+--database-url "$DATABASE_URL"} >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 300); do
    if curl -fsS "$BASE/healthz" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then cat "$WORK/server.log"; exit 1; fi
    sleep 0.2
done
curl -fsS "$BASE/healthz"; echo

echo "--- running schemathesis"
# All checks run. No check is excluded: none contradicts the spec.
# --max-examples bounds each phase per operation. (Not --max-time: with it, fuzzing and
# stateful testing repeat until the budget is spent.) `timeout` is the backstop.
# One worker: with several, Python 3.11's ast module (used by Hypothesis from threads)
# sporadically fails with "AST constructor recursion depth mismatch" (CPython gh-106905).
status=0
timeout 170 "$VENV/bin/schemathesis" run "$ROOT/openapi.yaml" \
    --url "$BASE" \
    --checks all \
    --max-examples "$MAX_EXAMPLES" \
    --seed 4001 \
    --workers 1 \
    --request-timeout 10 \
    --report junit --report-dir "$ROOT/target/schemathesis-report" || status=$?

cp "$WORK/server.log" "$ROOT/target/schemathesis-report/server.log" 2>/dev/null || true
if [[ $status -ne 0 ]]; then
    echo "--- schemathesis failed; last server log lines:"
    tail -n 40 "$WORK/server.log"
fi
if grep -q "panicked" "$WORK/server.log"; then
    echo "--- the server log contains a panic"
    grep -n -A5 "panicked" "$WORK/server.log" | head -40
    status=1
fi
exit $status
