#!/usr/bin/env bash
# `just bench-tls`: full TLS handshakes per second against the gate and against nginx,
# both serving the same ECDSA P-256 certificate, nginx with Mozilla's "intermediate"
# settings. Measured with `openssl s_time -new` (no session resumption), TLS 1.3 and
# TLS 1.2, in the same run, with the gate/nginx ratio. Bounded: DURATION s per run,
# 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-2}
for tool in nginx openssl curl; do
  command -v "$tool" >/dev/null || { echo "bench-tls needs $tool (apt-get install -y nginx openssl curl)"; exit 1; }
done
[ -n "${GATE_BIN:-}" ] || cargo build --release -q
GATE_BIN=${GATE_BIN:-./target/release/miauflix-gate}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
chmod 600 "$WORK/key.pem"

# nginx, Mozilla intermediate (2025): TLS 1.2 + 1.3, ECDHE AEAD suites, client order.
cat > "$WORK/nginx.conf" <<CONF
worker_processes auto; daemon off; pid $WORK/nginx.pid; error_log $WORK/nginx.err;
events { worker_connections 4096; }
http { access_log off;
  server {
    listen 127.0.0.1:18201 ssl;
    ssl_certificate $WORK/cert.pem;
    ssl_certificate_key $WORK/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ecdh_curve X25519:prime256v1:secp384r1;
    ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;
    ssl_prefer_server_ciphers off;
    ssl_session_timeout 1d;
    ssl_session_tickets off;
    location / { return 200 "ok"; }
  }
}
CONF
nginx -c "$WORK/nginx.conf" -p "$WORK" & PIDS+=($!)

MIAUFLIX_DATA_DIR="$WORK/gate" MIAUFLIX_LISTEN=127.0.0.1:18202 MIAUFLIX_LOG=warn MIAUFLIX_TLS=manual \
  MIAUFLIX_TLS__MANUAL__CERT_FILE="$WORK/cert.pem" MIAUFLIX_TLS__MANUAL__KEY_FILE="$WORK/key.pem" \
  MIAUFLIX_RATE_LIMITS__GLOBAL="{per_minute = 60000000, burst = 1000000}" \
  "$GATE_BIN" >"$WORK/gate.log" 2>&1 & PIDS+=($!)

for port in 18201 18202; do
  for _ in $(seq 100); do curl -fsk -o /dev/null "https://127.0.0.1:$port/healthz" 2>/dev/null && break; curl -fsk -o /dev/null "https://127.0.0.1:$port/" 2>/dev/null && break; sleep 0.1; done
done

# Handshakes/s: CLIENTS parallel `s_time -new` loops; sums connections over real time.
measure() {
  local port=$1 proto=$2 total=0 i
  for i in $(seq "$CLIENTS"); do
    openssl s_time -connect "127.0.0.1:$port" -new -time "$DURATION" "$proto" >"$WORK/st.$i" 2>/dev/null &
  done
  wait_for_clients
  for i in $(seq "$CLIENTS"); do
    n=$(grep -m1 -oE '^[0-9]+ connections in' "$WORK/st.$i" | grep -oE '^[0-9]+' || echo 0)
    total=$((total + n))
  done
  echo $((total / DURATION))
}
wait_for_clients() { for j in $(jobs -p); do case " ${PIDS[*]} " in *" $j "*) ;; *) wait "$j" || true ;; esac; done; }

printf '%-10s %14s %14s %8s\n' "protocol" "nginx hs/s" "gate hs/s" "ratio"
for proto in -tls1_3 -tls1_2; do
  n=$(measure 18201 "$proto")
  g=$(measure 18202 "$proto")
  ratio=$(awk -v g="$g" -v n="$n" 'BEGIN { if (n > 0) printf "%.2f", g / n; else print "n/a" }')
  printf '%-10s %14s %14s %8s\n' "${proto#-}" "$n" "$g" "$ratio"
done
echo "(full handshakes, ECDSA P-256, X25519; $CLIENTS clients x ${DURATION}s each; nginx worker_processes auto, gate one runtime thread per core)"
