#!/usr/bin/env bash
# Memory per idle keep-alive client connection, by the procedure of
# benches/load.sh without the rest of its run: one nginx upstream, the
# release build of switchyard as shipped (access log on, to a file), a
# 3-second `wrk -t1 -c64` warm-up, then 10,000 clients that each send one
# request, read the answer and stay open (benches/idle_connections.py);
# and, in a fresh process, 10,000 that connect and send nothing.
#
#   benches/idle_memory.sh                         # this checkout
#   BIN=/path/to/switchyard benches/idle_memory.sh # another build
#   HTTP1=hyper benches/idle_memory.sh             # listeners[].http1
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_PORT=${BASE_PORT:-19180}
source benches/common.sh
need_tools nginx wrk curl
switchyard_binary

UPSTREAM=$BASE_PORT PROXY=$((BASE_PORT + 1)) ADMIN=$((BASE_PORT + 2))
cat > "$WORK/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/error.log crit;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UPSTREAM;
    location / { return 200 'hello from the upstream behind the proxy'; }
  }
}
EOF
nginx -c "$WORK/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

start() { # -> pid of a fresh switchyard
  local dir
  dir=$(mktemp -d -p "$WORK")
  cat > "$dir/switchyard.yaml" <<EOF
listeners: [{address: "127.0.0.1:$PROXY"${HTTP1:+, http1: $HTTP1}}]
admin: {address: "127.0.0.1:$ADMIN"}
access_log: {path: "$dir/access.log"}
routes: [{service: bench}]
services:
  bench:
    instances: [{address: "127.0.0.1:$UPSTREAM"}]
EOF
  env -u RUST_LOG "$BIN" run -c "$dir/switchyard.yaml" --state-dir "$dir/versions" --no-watch \
    2>>"$dir/switchyard.log" >/dev/null &
  PIDS+=($!)
  SY=$!
  for _ in $(seq 50); do
    curl -fsS "http://127.0.0.1:$PROXY/" >/dev/null 2>&1 && return
    sleep 0.2
  done
  echo "switchyard did not start" >&2; cat "$dir/switchyard.log" >&2; exit 1
}
stop() { kill "$SY"; wait "$SY" 2>/dev/null || true; }

start
wrk -t1 -c64 -d3s "http://127.0.0.1:$PROXY/" >/dev/null
read -r count rss each < <(python3 benches/idle_connections.py "$PROXY" "$SY" 1)
echo "after a request: $count idle keep-alive connections, RSS $rss KiB, $each KiB each"
stop
start
read -r count rss each < <(python3 benches/idle_connections.py "$PROXY" "$SY" 0)
echo "before any request: $count connections, RSS $rss KiB, $each KiB each"
stop
