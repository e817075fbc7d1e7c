#!/usr/bin/env bash
# Installs nginx (Debian package) when it is missing: .ci/run calls it before scripts/test,
# whose interop suite runs phoenix.js through nginx in front of three nodes
# (tests/interop/longpoll-cluster.test.mjs), and .ci/nginx-tls.sh calls it too.
# Exits 1 when nginx is missing and cannot be installed (not root). Bounded: 300 s per step.
set -euo pipefail
if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "nginx-install: nginx is missing and we are not root"; exit 1
fi
deadline() { timeout --kill-after=10 "$@"; }
# nginx-light where Debian still has it (bookworm), else nginx.
apt_install() { deadline 300 apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1; }
apt_install nginx-light || apt_install nginx \
  || { deadline 300 apt-get update >/dev/null && { apt_install nginx-light || apt_install nginx; }; }
