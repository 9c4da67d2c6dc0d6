#!/usr/bin/env bash
# `just bench-proxy`: the same loopback upstream behind (a) nginx as a plain reverse proxy,
# (b) Caddy reverse_proxy, (c) the gate with bearer-JWT auth, rate limiting and security
# headers on — and (d) benches/hyper_floor.rs, a bare hyper proxy with no edge work, the floor
# under the gate's stack. Prints requests/s, p50, p99 and CPU time per request for each and the
# ratios gate/nginx, gate/Caddy (and floor/nginx). wrk, the upstream and the proxy share this
# machine's cores, so CPU time per request is the figure that compares the proxies' own cost.
# Bounded: each run is DURATION seconds against 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
for tool in nginx caddy wrk curl; do
  command -v "$tool" >/dev/null || { echo "bench-proxy needs $tool (apt-get install -y nginx caddy wrk curl)"; exit 1; }
done
[ -n "${GATE_BIN:-}" ] || cargo build --release -q
# (d) the floor: a bare hyper proxy with the gate's connection layout and no edge work.
FLOOR_BIN=$(cargo bench --bench hyper_floor --no-run --message-format=json -q 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*hyper_floor[^"]*\)".*/\1/p' | tail -1)
[ -x "$FLOOR_BIN" ] || { echo "bench-proxy: could not build benches/hyper_floor.rs"; exit 1; }
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

# Upstream: nginx answering a small JSON body.
cat > "$WORK/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/up.pid; error_log $WORK/up.err;
events { worker_connections 4096; }
http { access_log off;
  server { listen 127.0.0.1:18100; location / { default_type application/json; return 200 '{"items":[1,2,3],"ok":true}'; } } }
CONF
nginx -c "$WORK/upstream.conf" -p "$WORK" & PIDS+=($!)

# (a) nginx as a plain reverse proxy.
cat > "$WORK/proxy.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/px.pid; error_log $WORK/px.err;
events { worker_connections 4096; }
http { access_log off;
  upstream up { server 127.0.0.1:18100; keepalive 64; }
  server { listen 127.0.0.1:18101; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
nginx -c "$WORK/proxy.conf" -p "$WORK" & PIDS+=($!)
NGINX_PID=$!

# (b) Caddy reverse_proxy.
cat > "$WORK/Caddyfile" <<CONF
{
  admin off
  auto_https off
  log {
    output discard
  }
}
http://127.0.0.1:18102 {
  reverse_proxy 127.0.0.1:18100
}
CONF
caddy run --config "$WORK/Caddyfile" --adapter caddyfile >"$WORK/caddy.log" 2>&1 & PIDS+=($!)
CADDY_PID=$!
sleep 0.5; if ! kill -0 "${PIDS[-1]}" 2>/dev/null; then echo "caddy failed to start:"; cat "$WORK/caddy.log"; exit 1; fi

# (c) the gate: route needs role user (bearer JWT), rate limits on, security headers on.
cat > "$WORK/gate.toml" <<CONF
listen = "127.0.0.1:18103"
data_dir = "$WORK/gate"
[tls]
mode = "off"
[log]
level = "warn"
[rate_limits.api]
per_minute = 60000000
burst = 1000000
[rate_limits.global]
per_minute = 60000000
burst = 1000000
[[routes]]
prefix = "/bench"
upstream = "http://127.0.0.1:18100"
min_role = "user"
CONF
# The same route with what a Miauflix backend checks: the signed identity assertion and the
# shared header (from a file here, so the bench needs no API call to set it). NO_SIGNED=1
# leaves it out (for a binary older than these options).
[ -n "${NO_SIGNED:-}" ] || cat >> "$WORK/gate.toml" <<CONF
[[routes]]
prefix = "/signed"
upstream = "http://127.0.0.1:18100"
min_role = "user"
identity_assertion = true
upstream_headers = { "X-Reverse-Proxy-Secret" = { value_file = "$WORK/shared" } }
CONF
echo "bench-shared-value" > "$WORK/shared"
MIAUFLIX_CONFIG="$WORK/gate.toml" "${GATE_BIN:-./target/release/miauflix-gate}" >"$WORK/gate.log" 2>&1 & PIDS+=($!)
GATE_PID=$!
"$FLOOR_BIN" 127.0.0.1:18104 127.0.0.1:18100 >"$WORK/floor.log" 2>&1 & PIDS+=($!)
FLOOR_PID=$!
sleep 0.5; if ! kill -0 "${PIDS[-1]}" 2>/dev/null; then echo "gate failed to start:"; cat "$WORK/gate.log"; exit 1; fi

for port in 18100 18101 18102 18103 18104; do
  path=/; [ "$port" = 18103 ] && path=/healthz
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$port$path" 2>/dev/null && break; sleep 0.1; done
done
TOKEN_SETUP=$(cat "$WORK/gate/setup-token")
curl -fs -o /dev/null -H 'content-type: application/json' \
  -d "{\"email\":\"bench@example.com\",\"password\":\"bench-password-long\",\"setupToken\":\"$TOKEN_SETUP\"}" http://127.0.0.1:18103/api/auth/setup
ACCESS=$(curl -fs -H 'content-type: application/json' -d '{"email":"bench@example.com","password":"bench-password-long"}' \
  http://127.0.0.1:18103/api/auth/token | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
curl -fs -o /dev/null -H "authorization: Bearer $ACCESS" http://127.0.0.1:18103/bench/items || { echo "gate route check failed"; exit 1; }

# CPU time (user + system, in clock ticks) a process and its children have used so far.
ticks() { local t=0 p; for p in "$1" $(pgrep -P "$1" || true); do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
run() { # name url header key pid
  local out t0 t1
  t0=$(ticks "$5")
  if [ -n "${3:-}" ]; then out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -H "$3" "$2"); else out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "$2"); fi
  t1=$(ticks "$5")
  local rps p50 p99 non2xx n cpu
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  cpu=$(awk -v t=$((t1 - t0)) -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
  printf "%-34s %12s req/s   p50 %8s   p99 %8s   CPU %6s µs/req   non-2xx %s\n" "$1" "$rps" "$p50" "$p99" "$cpu" "${non2xx:-0}"
  echo "$rps" > "$WORK/$4.rps"
}
echo "bench-proxy: wrk -t2 -c$CONNS -d${DURATION}s against 127.0.0.1 on $(nproc) cores"
[ -n "${ONLY_GATE:-}" ] || run "nginx reverse proxy" http://127.0.0.1:18101/bench/items "" nginx "$NGINX_PID"
[ -n "${ONLY_GATE:-}" ] || run "caddy reverse_proxy" http://127.0.0.1:18102/bench/items "" caddy "$CADDY_PID"
run "gate (JWT + rate limits + headers)" http://127.0.0.1:18103/bench/items "Authorization: Bearer $ACCESS" gate "$GATE_PID"
[ -n "${NO_SIGNED:-}" ] || run "gate + assertion + shared header" http://127.0.0.1:18103/signed/items "Authorization: Bearer $ACCESS" signed "$GATE_PID"
[ -n "${ONLY_GATE:-}" ] || run "hyper floor (no edge work)" http://127.0.0.1:18104/bench/items "" floor "$FLOOR_PID"
[ -n "${ONLY_GATE:-}" ] || awk -v g="$(cat "$WORK/gate.rps")" -v n="$(cat "$WORK/nginx.rps")" -v c="$(cat "$WORK/caddy.rps")" \
  -v f="$(cat "$WORK/floor.rps")" \
  'BEGIN { printf "ratio gate/nginx = %.2f   ratio gate/caddy = %.2f   (floor/nginx = %.2f)\n", g/n, g/c, f/n }'
[ -n "${NO_SIGNED:-}" ] || awk -v g="$(cat "$WORK/gate.rps")" -v s="$(cat "$WORK/signed.rps")" \
  'BEGIN { printf "ratio signed/gate = %.3f (the assertion and the shared header)\n", s/g }'
