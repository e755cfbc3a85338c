#!/usr/bin/env bash
# Side-by-side load benchmark: switchyard against nginx, HAProxy and (when
# its binary exists) monolake, all as round-robin reverse proxies in front of
# the same three upstreams, on loopback only, measured in one run with the
# targets alternating round by round so machine drift hits all of them alike.
#
#   benches/load.sh                 # 3 rounds of 5 s per target and load
#   ROUNDS=5 DURATION=10 benches/load.sh
#   WRK_THREADS="1 2" benches/load.sh   # wrk -t1 and -t2 (the default)
#   VARIANTS=0 benches/load.sh      # skip the least_connections / ip_hash /
#                                   # rate-limit / metrics-and-logs variants
#   VARIANTS=0 RATE_LIMIT=on benches/load.sh   # only the rate-limit variant
#                                   # (RATE_LIMIT=off drops it from VARIANTS=1)
#   BIN=/path/to/switchyard benches/load.sh      # another build
#   MONOLAKE=/path/to/monolake benches/load.sh   # default: where
#                                   # monolake-build.sh leaves it
#   HTTP1=hyper benches/load.sh     # switchyard's listeners[].http1
#
# switchyard runs twice in every round: as shipped (`switchyard`: access log
# on, default format json, to a file on disk as a deployment would) and with
# the log off (`switchyard/log-off`: `access_log: {enabled: false}`); the
# least_connections / ip_hash variants run with the log off, and so does
# `switchyard/rate-limit` (a global rate limit per client IP set so high it
# is never reached: compare it with `switchyard/log-off` for its cost). Each is its own
# process. A last target, HAProxy as a plain TCP relay, shows the ceiling: it
# parses no HTTP but makes the same socket calls per request as the HTTP
# proxies.
#
# Prints, per wrk thread count and connection count: median req/s, p50 and
# p99 latency, errors, CPU time per request (user and sys time of the
# proxy's processes over the run, divided by the requests served) and each
# proxy's req/s as a ratio to the direct run and to the best of nginx,
# HAProxy and monolake; then switchyard's log-on / log-off ratio.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every proxy here needs more descriptors than the usual soft limit of 1024.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-"64 256"}
WRK_THREADS=${WRK_THREADS:-"1 2"}
MONOLAKE=${MONOLAKE:-${TMPDIR:-/tmp}/monolake-build/target/release/monolake}
VARIANTS=${VARIANTS:-1}
# The rate-limit variant runs with the others unless told otherwise.
if [ "$VARIANTS" = 1 ]; then RATE_LIMIT=${RATE_LIMIT:-on}; else RATE_LIMIT=${RATE_LIMIT:-off}; fi
case "$RATE_LIMIT" in on|off) ;; *) echo "RATE_LIMIT must be on or off (got $RATE_LIMIT)" >&2; exit 2;; esac
BASE_PORT=${BASE_PORT:-18080}

source benches/common.sh
need_tools nginx haproxy wrk
switchyard_binary   # BIN=path/to/switchyard: another build

UP1=$((BASE_PORT + 1)) UP2=$((BASE_PORT + 2)) UP3=$((BASE_PORT + 3))
NGINX_PORT=$((BASE_PORT + 10)) HAPROXY_PORT=$((BASE_PORT + 11))
SY_PORT=$((BASE_PORT + 12)) SY_ADMIN=$((BASE_PORT + 13)) RELAY_PORT=$((BASE_PORT + 14))
MONOLAKE_PORT=$((BASE_PORT + 18))

# --- upstreams: nginx, one worker each, `return 200` with ~100 bytes ------
BODY='{"service":"bench","instance":"upstream","message":"hello from the upstream behind the proxy!!"}'
for port in $UP1 $UP2 $UP3; do
  mkdir -p "$WORK/up$port"
  cat > "$WORK/up$port/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/up$port/nginx.pid;
error_log $WORK/up$port/error.log crit;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$port reuseport backlog=4096;
    location / { default_type application/json; return 200 '$BODY'; }
  }
}
EOF
  nginx -c "$WORK/up$port/nginx.conf" -g 'daemon off;' &
  PIDS+=($!)
done

# --- nginx as the reverse proxy: 2 workers, upstream keep-alive sized for the
# connection count (nginx docs: keepalive = idle connections kept per worker)
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nginx.conf" <<EOF
worker_processes 2;
worker_rlimit_nofile 65536;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log crit;
events { worker_connections 16384; multi_accept on; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream backends {
    server 127.0.0.1:$UP1;
    server 127.0.0.1:$UP2;
    server 127.0.0.1:$UP3;
    keepalive 256;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT reuseport backlog=4096;
    location / {
      proxy_pass http://backends;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering on;
    }
  }
}
EOF
nginx -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
NGINX_MASTER=$!
PIDS+=($NGINX_MASTER)

# --- HAProxy: 2 threads, connection reuse (HAProxy docs: http-reuse always)
cat > "$WORK/haproxy.cfg" <<EOF
global
  nbthread 2
  maxconn 9000
  log stderr format raw local0 emerg
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend be
backend be
  balance roundrobin
  server u1 127.0.0.1:$UP1
  server u2 127.0.0.1:$UP2
  server u3 127.0.0.1:$UP3
EOF
haproxy -f "$WORK/haproxy.cfg" -db 2>"$WORK/haproxy.log" &
HAPROXY_PID=$!
PIDS+=($HAPROXY_PID)

# --- the ceiling: HAProxy as a plain TCP relay (mode tcp), which parses no
# HTTP and pins each client connection to one upstream connection. It makes
# the same four socket calls per request as any HTTP proxy here, so no
# HTTP proxy can be expected to beat it on this machine.
sed -e 's/mode http/mode tcp/' -e '/option http-keep-alive/d' -e '/http-reuse/d' \
  -e "s/:$HAPROXY_PORT\$/:$RELAY_PORT/" "$WORK/haproxy.cfg" > "$WORK/relay.cfg"
haproxy -f "$WORK/relay.cfg" -db 2>"$WORK/relay.log" &
RELAY_PID=$!
PIDS+=($RELAY_PID)

# --- monolake (ByteDance, Rust on monoio/io_uring), when built: 2 workers
MONOLAKE_PID=
if [ -x "$MONOLAKE" ]; then
  cat > "$WORK/monolake.toml" <<EOF
[runtime]
worker_threads = 2
[servers.bench]
name = "bench"
listener = { type = "socket", value = "127.0.0.1:$MONOLAKE_PORT" }
upstream_http_version = "http11"
[[servers.bench.routes]]
path = "/"
upstreams = [
  { endpoint = { type = "uri", value = "http://127.0.0.1:$UP1" } },
  { endpoint = { type = "uri", value = "http://127.0.0.1:$UP2" } },
  { endpoint = { type = "uri", value = "http://127.0.0.1:$UP3" } },
]
EOF
  "$MONOLAKE" --config "$WORK/monolake.toml" >"$WORK/monolake.log" 2>&1 &
  MONOLAKE_PID=$!
  PIDS+=($MONOLAKE_PID)
else
  echo "monolake not found at $MONOLAKE (monolake-build.sh builds it); measuring without it" >&2
fi

# --- switchyard: one process per variant, each on its own ports, so every
# variant is measured inside the same interleaved rounds as the references
sy_config() { # strategy port admin-port access-log [more top-level yaml]
  cat <<EOF
listeners: [{address: "127.0.0.1:$2"${HTTP1:+, http1: $HTTP1}}]
admin: {address: "127.0.0.1:$3"}
access_log: $4
${5:-}
routes: [{service: bench}]
services:
  bench:
    strategy: $1
    instances:
      - {address: "127.0.0.1:$UP1"}
      - {address: "127.0.0.1:$UP2"}
      - {address: "127.0.0.1:$UP3"}
EOF
}
declare -A SY_PIDS SY_PORTS
SY_NAMES=()
start_switchyard() { # name port strategy on|off [more top-level yaml]
  local name=$1 port=$2 dir="$WORK/sy-${#SY_NAMES[@]}" log
  if [ -n "${SY_PIDS[$name]:-}" ]; then
    kill "${SY_PIDS[$name]}"; wait "${SY_PIDS[$name]}" 2>/dev/null || true
  else
    SY_NAMES+=("$name")
  fi
  mkdir -p "$dir"
  if [ "$4" = on ]; then log="{path: \"$dir/access.log\"}"; else log="{enabled: false}"; fi
  sy_config "$3" "$port" "$((port + 100))" "$log" "${5:-}" > "$dir/switchyard.yaml"
  # The shipped defaults otherwise: log level info, text log on stderr.
  env -u RUST_LOG "$BIN" run -c "$dir/switchyard.yaml" --state-dir "$dir/versions" --no-watch \
    2>>"$dir/switchyard.log" >/dev/null &
  SY_PIDS[$name]=$!
  SY_PORTS[$name]=$port
  PIDS+=($!)
  for _ in $(seq 50); do
    curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "switchyard ($name) did not start" >&2; cat "$dir/switchyard.log" >&2; exit 1
}
start_switchyard switchyard "$SY_PORT" round_robin on
start_switchyard switchyard/log-off $((BASE_PORT + 17)) round_robin off
if [ "$VARIANTS" = 1 ]; then
  start_switchyard switchyard/least_connections $((BASE_PORT + 15)) least_connections off
  start_switchyard switchyard/ip_hash $((BASE_PORT + 16)) ip_hash off
fi
if [ "$RATE_LIMIT" = on ]; then
  # A global rate limit per client IP that is never reached: what the check
  # costs (compared with switchyard/log-off below).
  start_switchyard switchyard/rate-limit $((BASE_PORT + 19)) round_robin off \
    "rate_limit: {rate: 1000000000, burst: 1000000000}"
fi

REF_PORTS="$NGINX_PORT $HAPROXY_PORT $RELAY_PORT${MONOLAKE_PID:+ $MONOLAKE_PORT}"
for port in $UP1 $UP2 $UP3 $REF_PORTS; do
  for _ in $(seq 50); do curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1 && break; sleep 0.1; done
done
for port in $REF_PORTS; do
  curl -fsS "http://127.0.0.1:$port/" >/dev/null || { echo "proxy on $port is not answering" >&2; cat "$WORK"/*.log >&2; exit 1; }
done
NGINX_PIDS() { echo "$NGINX_MASTER $(pgrep -P "$NGINX_MASTER" | tr '\n' ' ')"; }
HAPROXY_PIDS() { echo "$HAPROXY_PID $(pgrep -P "$HAPROXY_PID" | tr '\n' ' ')"; }

cpu_ticks() { # pids... -> "utime stime" in clock ticks
  local user=0 sys=0
  for pid in "$@"; do
    [ -r "/proc/$pid/stat" ] || continue
    # fields 14 and 15, after the parenthesised command name
    read -r u s < <(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12, $13}')
    user=$((user + u)) sys=$((sys + s))
  done
  echo "$user $sys"
}
TICKS=$(getconf CLK_TCK)

RESULTS="$WORK/results"
: > "$RESULTS"
measure() { # name port connections pids...   (wrk threads: $THREADS)
  local name=$1 port=$2 conns=$3; shift 3
  local user0 sys0 user1 sys1 out
  read -r user0 sys0 < <(cpu_ticks "$@")
  out=$(wrk -t"$THREADS" -c"$conns" -d"${DURATION}s" --latency "http://127.0.0.1:$port/" 2>&1) || true
  read -r user1 sys1 < <(cpu_ticks "$@")
  local rps p50 p99 requests errors
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errors=$(awk '/Socket errors/ {gsub(",",""); s=$4+$6+$8+$10} /Non-2xx/ {n=$NF} END {print s+n+0}' <<<"$out")
  local user_us="-" sys_us="-"
  if [ $# -gt 0 ] && [ "${requests:-0}" -gt 0 ]; then
    per_request() { awk -v d="$1" -v t="$TICKS" -v r="$requests" 'BEGIN {printf "%.1f", d / t * 1e6 / r}'; }
    user_us=$(per_request $((user1 - user0)))
    sys_us=$(per_request $((sys1 - sys0)))
  fi
  echo "$name $THREADS $conns $rps $p50 $p99 $errors $user_us $sys_us" >> "$RESULTS"
  printf '  %-28s t=%s c=%-4s %10s req/s  p50 %-8s p99 %-8s errors %-4s cpu/req %s user + %s sys us\n' \
    "$name" "$THREADS" "$conns" "$rps" "$p50" "$p99" "$errors" "$user_us" "$sys_us" >&2
}

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $ROUNDS rounds x ${DURATION}s" >&2
for round in $(seq "$ROUNDS"); do
  echo "round $round" >&2
  for THREADS in $WRK_THREADS; do
    for conns in $CONNECTIONS; do
      measure direct "$UP1" "$conns"
      # shellcheck disable=SC2046
      measure nginx "$NGINX_PORT" "$conns" $(NGINX_PIDS)
      # shellcheck disable=SC2046
      measure haproxy "$HAPROXY_PORT" "$conns" $(HAPROXY_PIDS)
      if [ -n "$MONOLAKE_PID" ]; then
        measure monolake "$MONOLAKE_PORT" "$conns" "$MONOLAKE_PID"
      fi
      for name in "${SY_NAMES[@]}"; do
        measure "$name" "${SY_PORTS[$name]}" "$conns" "${SY_PIDS[$name]}"
      done
      measure tcp-relay "$RELAY_PORT" "$conns" "$RELAY_PID"
    done
  done
done

# --- memory -------------------------------------------------------------------
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# Idle client connections: 10,000 (bounded in count and time) that never
# send a request, then, in a fresh process after the 256-connection load,
# 10,000 keep-alive clients that send one, read the answer and sit idle.
idle_connections() { # port pid send-request(0|1) -> "count rss-after KiB-each"
  python3 benches/idle_connections.py "$@"
}
start_switchyard switchyard "$SY_PORT" round_robin on
read -r _ _ PER_SILENT_CONN < <(idle_connections "$SY_PORT" "${SY_PIDS[switchyard]}" 0)
start_switchyard switchyard "$SY_PORT" round_robin on
SY_PID=${SY_PIDS[switchyard]}
IDLE_RSS=$(rss_kib "$SY_PID")
wrk -t2 -c256 -d"${DURATION}s" "http://127.0.0.1:$SY_PORT/" >/dev/null 2>&1 &
WRK=$!
sleep $((DURATION / 2 + 1))
LOADED_RSS=$(rss_kib "$SY_PID")
wait $WRK || true
read -r IDLE_CONNS IDLE_CONNS_RSS PER_CONN < <(idle_connections "$SY_PORT" "$SY_PID" 1)
printf 'memory: idle %s KiB; %s KiB during 256-connection load; %s KiB with %s idle keep-alive connections (%s KiB each; %s KiB each before their first request)\n' \
  "$IDLE_RSS" "$LOADED_RSS" "$IDLE_CONNS_RSS" "$IDLE_CONNS" "$PER_CONN" "$PER_SILENT_CONN" > "$WORK/memory.txt"
cat "$WORK/memory.txt" >&2

# --- the table: medians over rounds -----------------------------------------
python3 - "$RESULTS" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, threads, conns, rps, p50, p99, errors, user, sys_ = line.split()
    cpu = None if user == "-" else (float(user), float(sys_))
    key = (name, (int(threads), int(conns)))
    rows.setdefault(key, []).append((float(rps), p50, p99, int(errors), cpu))

def ms(text):
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float("nan")

names = []
for name, _ in rows:
    if name not in names:
        names.append(name)
for load in sorted({c for _, c in rows}):
    threads, conns = load
    med = {}
    for name in names:
        runs = rows.get((name, load))
        if not runs:
            continue
        cpu = [r[4] for r in runs if r[4] is not None]
        med[name] = (
            statistics.median(r[0] for r in runs),
            statistics.median(ms(r[1]) for r in runs),
            statistics.median(ms(r[2]) for r in runs),
            sum(r[3] for r in runs),
            # the run with the median total, so user + sys add up
            sorted(cpu, key=sum)[len(cpu) // 2] if cpu else None,
        )
    direct = med.get("direct", (float("nan"),))[0]
    refs = [r for r in ("nginx", "haproxy", "monolake") if r in med]
    best_ref = max((med[r][0] for r in refs), default=0)
    print(f"\nwrk -t{threads}, {conns} connections (median of {len(rows[('direct', load)])} runs)")
    print(f"| target | req/s | p50 ms | p99 ms | errors | CPU µs/req (user + sys) | × direct | × best of {'/'.join(refs)} |")
    print(f"|---|---|---|---|---|---|---|---|")
    for name, (rps, p50, p99, errors, cpu) in med.items():
        cpu_text = f"{sum(cpu):.1f} ({cpu[0]:.1f} + {cpu[1]:.1f})" if cpu is not None else "-"
        ref = f"{rps / best_ref:.2f}" if name != "direct" and best_ref else "-"
        print(f"| {name} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {errors} | {cpu_text} | {rps / direct:.2f} | {ref} |")
    on, off = med.get("switchyard"), med.get("switchyard/log-off")
    if on and off and off[0]:
        # Round by round too: the two ran back to back each time.
        pairs = [a[0] / b[0] for a, b in zip(rows[("switchyard", load)], rows[("switchyard/log-off", load)]) if b[0]]
        each = ", ".join(f"{p:.3f}" for p in pairs)
        print(f"\nswitchyard as shipped / log off: {on[0] / off[0]:.3f} (median req/s; round by round {each})")
    limited = med.get("switchyard/rate-limit")
    if limited and off and off[0]:
        pairs = [a[0] / b[0] for a, b in zip(rows[("switchyard/rate-limit", load)], rows[("switchyard/log-off", load)]) if b[0]]
        each = ", ".join(f"{p:.3f}" for p in pairs)
        cost = (1 - limited[0] / off[0]) * 100
        print(f"switchyard rate limit (never reached) / log off: {limited[0] / off[0]:.3f}, a cost of {cost:.1f}% (median req/s; round by round {each})")
EOF
echo
cat "$WORK/memory.txt"
