#!/usr/bin/env bash
# Instructions the proxy executes per proxied request, counted by callgrind:
# unlike req/s on a shared machine, the count repeats run after run, so it
# shows what a change to the request path costs or saves.
#
#   benches/instructions.sh              # the release build of this checkout
#   BIN=/path/to/switchyard benches/instructions.sh   # another build
#   LOGS="on" benches/instructions.sh    # only as shipped (default: "off on")
#   HTTP1=hyper benches/instructions.sh                # listeners[].http1
#   RATE_LIMIT=on benches/instructions.sh              # a global rate limit per
#     client IP that is never reached (rate 1000000000/s): its cost per request
#   TRACEPARENT=on benches/instructions.sh             # every request comes
#     with a valid traceparent and a tracestate (default: none, so the proxy
#     starts each trace); span export stays off
#   PROFILE=out.callgrind benches/instructions.sh      # keep a profile:
#     callgrind_annotate out.callgrind.on | head -40    # where they go
#
# Measured twice: with the access log off (`access_log: {enabled: false}`)
# and as shipped (log on, default format json, to a file on disk). A build
# from before the `access_log` setting runs with `RUST_LOG=warn` for "off"
# and `RUST_LOG=info` (its log on stderr, to a file) for "on".
#
# With PROFILE the counters are not zeroed (callgrind loses the per-function
# split of a zeroed dump), so start-up and warm-up, a few percent, are in it.
#
# One nginx upstream (`return 200`, ~100 bytes) and switchyard under
# callgrind on 127.0.0.1; wrk (1 thread, 8 connections) warms up for 3 s,
# the counters are zeroed, then 10 s of load are counted. Start-up and
# warm-up are not in the figure. Everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_PORT=${BASE_PORT:-19080}
source benches/common.sh
need_tools nginx wrk valgrind
switchyard_binary

UPSTREAM=$BASE_PORT PROXY=$((BASE_PORT + 1)) ADMIN=$((BASE_PORT + 2))
BODY='{"service":"bench","instance":"upstream","message":"hello from the upstream behind the proxy!!"}'
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
    location / { default_type application/json; return 200 '$BODY'; }
  }
}
EOF
nginx -c "$WORK/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

# Whether this build knows the `access_log` setting.
if "$BIN" check -c /dev/stdin <<<'listeners: [{address: "127.0.0.1:1"}]
access_log: {enabled: false}' >/dev/null 2>&1; then NEW_LOG=1; else NEW_LOG=0; fi

for log in ${LOGS:-off on}; do
  dir="$WORK/log-$log"
  mkdir -p "$dir"
  filter=info access_log=""
  if [ "$NEW_LOG" = 1 ]; then
    if [ "$log" = on ]; then
      access_log="access_log: {path: \"$dir/access.log\"}"
    else
      access_log="access_log: {enabled: false}"
    fi
  elif [ "$log" = off ]; then
    filter=warn
  fi
  rate_limit=""
  if [ "${RATE_LIMIT:-off}" = on ]; then
    rate_limit="rate_limit: {rate: 1000000000, burst: 1000000000}"
  fi
  cat > "$dir/switchyard.yaml" <<EOF
listeners: [{address: "127.0.0.1:$PROXY"${HTTP1:+, http1: $HTTP1}}]
admin: {address: "127.0.0.1:$ADMIN"}
$access_log
$rate_limit
routes: [{service: bench}]
services:
  bench:
    instances: [{address: "127.0.0.1:$UPSTREAM"}]
EOF
  # stderr to a file: an old build writes its log there.
  RUST_LOG=$filter valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.%p" \
    --log-file="$dir/valgrind.log" \
    "$BIN" run -c "$dir/switchyard.yaml" --state-dir "$dir/versions" --no-watch \
    2>"$dir/stderr.log" >/dev/null &
  VALGRIND=$!
  PIDS+=($VALGRIND)
  for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$PROXY/" >/dev/null 2>&1 && break
    sleep 0.3
  done
  curl -fsS "http://127.0.0.1:$PROXY/" >/dev/null || { cat "$dir/valgrind.log" "$dir/stderr.log" >&2; exit 1; }

  trace_headers=()
  if [ "${TRACEPARENT:-off}" = on ]; then
    trace_headers=(-H "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
      -H "tracestate: rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
  fi
  wrk -t1 -c8 -d3s "${trace_headers[@]}" "http://127.0.0.1:$PROXY/" >/dev/null
  [ -z "${PROFILE:-}" ] && callgrind_control -z "$VALGRIND" >/dev/null 2>&1
  out=$(wrk -t1 -c8 -d10s "${trace_headers[@]}" "http://127.0.0.1:$PROXY/")
  callgrind_control -d "$VALGRIND" >/dev/null 2>&1
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  dump=$(ls "$dir"/callgrind.*.1 | head -1)
  if [ -n "${PROFILE:-}" ]; then
    cp "$dump" "$PROFILE.$log"
    echo "access log $log: profile of $requests counted requests (plus start-up and warm-up) written to $PROFILE.$log"
  else
    instructions=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
    awk -v i="$instructions" -v r="$requests" -v which="$log" \
      'BEGIN {printf "access log %-3s: %d requests, %d instructions: %.0f instructions per proxied request\n", which, r, i, i / r}'
  fi
  kill "$VALGRIND" 2>/dev/null || true
  wait "$VALGRIND" 2>/dev/null || true
done
