#!/usr/bin/env bash
# Issue #15: the deploy/ nginx site in front of the real binary, over TLS on loopback.
# Installs nginx (Debian package) if missing, makes a self-signed certificate, renders
# deploy/nginx/phx-threads.conf for test ports, starts phx-threads behind it, and runs
#   - the dashboard browser test through https:// (Chromium ignoring the certificate),
#   - the React app's roster test through https:// and wss://,
#   - a phoenix.js client from Node through wss:// (NODE_TLS_REJECT_UNAUTHORIZED=0),
#   - /metrics refused from outside loopback rules and /healthz through the proxy.
# Needs the release binary and superheroes-react/node_modules + dist (scripts/test builds them).
# Bounded: every step has a timeout; the whole script stops after 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${PHX_THREADS_BIN:-$ROOT/target/release/phx-threads}
deadline() { timeout --kill-after=10 "$@"; }

if ! .ci/nginx-install.sh; then
  echo "nginx-tls: nginx is missing and we are not root; skipped"; exit 0
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

if command -v systemd-analyze >/dev/null 2>&1; then
  # verify needs the ExecStart binary at its path; check copies pointing at ours. The
  # cluster's template unit is verified as its instance @1.
  for unit in phx-threads.service phx-threads@.service; do
    echo "== systemd-analyze verify deploy/$unit"
    unit_dir=$(mktemp -d)
    sed "s|/usr/local/bin/phx-threads|$BIN|" "deploy/$unit" > "$unit_dir/$unit"
    target=$unit_dir/$unit
    if [ "$unit" = phx-threads@.service ]; then
      ln -s "$unit" "$unit_dir/phx-threads@1.service"; target=$unit_dir/phx-threads@1.service
    fi
    out=$(deadline 60 systemd-analyze verify "$target" 2>&1 || true)
    rm -rf "$unit_dir"
    # Only lines about our unit count (verify also lints unrelated units of the host).
    if echo "$out" | grep 'phx-threads' | grep -v -i 'user.*phx-threads\|group.*phx-threads'; then
      echo "systemd-analyze verify found problems in deploy/$unit"; exit 1
    fi
  done
else
  echo "== systemd-analyze not present: unit not verified"
fi

WORK=$(mktemp -d /tmp/phx-nginx-tls.XXXXXX)
chmod 755 "$WORK"
cleanup() {
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  [ -n "${PHX_PID:-}" ] && kill -TERM "$PHX_PID" 2>/dev/null && wait "$PHX_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP_PORT=$(free_port); WS_PORT=$(free_port); TLS_PORT=$(free_port); PLAIN_PORT=$(free_port)
TOKEN=ci-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')

echo "== self-signed certificate"
deadline 30 openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null

echo "== render deploy/nginx for ports tls=$TLS_PORT http=$HTTP_PORT ws=$WS_PORT"
sed -e "s|127.0.0.1:4001|127.0.0.1:$HTTP_PORT|; s|127.0.0.1:4080|127.0.0.1:$WS_PORT|" \
    -e "s|listen 443 ssl http2;|listen 127.0.0.1:$TLS_PORT ssl http2;|; /listen \[::\]:443/d" \
    -e "s|listen 80;|listen 127.0.0.1:$PLAIN_PORT;|; /listen \[::\]:80/d" \
    -e "s|server_name example.com;|server_name localhost;|" \
    -e "s|/etc/letsencrypt/live/example.com/fullchain.pem|$WORK/cert.pem|" \
    -e "s|/etc/letsencrypt/live/example.com/privkey.pem|$WORK/key.pem|" \
    -e "s|/var/log/nginx/phx-threads.access.log|$WORK/access.log|" \
    deploy/nginx/phx-threads.conf > "$WORK/site.conf"
cat > "$WORK/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/error.log warn;
events { worker_connections 1024; }
http {
  client_body_temp_path $WORK/body;
  proxy_temp_path $WORK/proxy;
  include $ROOT/deploy/nginx/log-format.conf;
  include $WORK/site.conf;
}
CONF
deadline 10 "$NGINX" -t -c "$WORK/nginx.conf" -p "$WORK/" 2>&1 || { echo "nginx -t failed"; exit 1; }

echo "== nginx -t of deploy/nginx/phx-threads-cluster.conf (the three-node site)"
mkdir -p "$WORK/cluster"
sed -e "s|listen 443 ssl http2;|listen 127.0.0.1:$TLS_PORT ssl http2;|; /listen \[::\]:443/d" \
    -e "s|listen 80;|listen 127.0.0.1:$PLAIN_PORT;|; /listen \[::\]:80/d" \
    -e "s|/etc/letsencrypt/live/example.com/fullchain.pem|$WORK/cert.pem|" \
    -e "s|/etc/letsencrypt/live/example.com/privkey.pem|$WORK/key.pem|" \
    -e "s|/var/log/nginx/phx-threads.access.log|$WORK/cluster/access.log|" \
    deploy/nginx/phx-threads-cluster.conf > "$WORK/cluster/site.conf"
sed -e "s|$WORK/site.conf|$WORK/cluster/site.conf|; s|$WORK/nginx.pid|$WORK/cluster/nginx.pid|" \
    "$WORK/nginx.conf" > "$WORK/cluster/nginx.conf"
deadline 10 "$NGINX" -t -c "$WORK/cluster/nginx.conf" -p "$WORK/" 2>&1 \
  || { echo "nginx -t failed for the cluster site"; exit 1; }

echo "== phx-threads behind nginx"
"$BIN" serve --ws-addr "127.0.0.1:$WS_PORT" --http-addr "127.0.0.1:$HTTP_PORT" \
  --data-dir "$WORK/data" --static-dir superheroes-react/dist \
  --public-ws-url /socket --admin-token "$TOKEN" --log-format json \
  > "$WORK/phx.out" 2> "$WORK/phx.err" &
PHX_PID=$!
deadline 120 bash -c "until grep -q listening '$WORK/phx.out'; do kill -0 $PHX_PID || exit 1; sleep 0.2; done" \
  || { echo "phx-threads did not start:"; tail -20 "$WORK/phx.err"; exit 1; }
deadline 10 "$NGINX" -c "$WORK/nginx.conf" -p "$WORK/"

BASE="https://localhost:$TLS_PORT"
curl_k() { deadline 20 curl -sk --max-time 15 "$@"; }
[ "$(curl_k -o /dev/null -w '%{http_code}' "$BASE/healthz")" = 200 ] || { echo "/healthz via nginx failed"; exit 1; }
[ "$(curl_k "$BASE/config.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["socket_url"])')" = /socket ] \
  || { echo "/config.json does not give the same-origin /socket"; exit 1; }
[ "$(curl_k -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PLAIN_PORT/")" = 301 ] || { echo "no redirect to https"; exit 1; }
# /metrics: loopback is allowed by the site (this is how a local Prometheus scrapes).
metrics=$(curl_k "$BASE/metrics")
grep -q '^phx_threads ' <<<"$metrics" || { echo "/metrics via nginx failed: ${metrics:0:300}"; exit 1; }

echo "== phoenix.js from Node over wss://"
(cd tests/interop && NODE_TLS_REJECT_UNAUTHORIZED=0 PHX_WSS_URL="wss://localhost:$TLS_PORT/socket" \
  deadline 120 node --test wss.test.mjs)

echo "== browser tests over https:// and wss://"
(cd superheroes-react && E2E_BASE_URL="$BASE" E2E_SOCKET_URL="wss://localhost:$TLS_PORT/socket" \
  E2E_ADMIN_TOKEN="$TOKEN" NODE_TLS_REJECT_UNAUTHORIZED=0 \
  deadline 300 node --test --test-concurrency=1 e2e/dashboard.test.mjs e2e/roster-tls.test.mjs)

if grep -H "$TOKEN" "$WORK/access.log" "$WORK/phx.err" | head -3 && grep -q "$TOKEN" "$WORK/access.log" "$WORK/phx.err"; then
  echo "the admin token reached a log"; exit 1
fi
echo "nginx-tls: ok"
