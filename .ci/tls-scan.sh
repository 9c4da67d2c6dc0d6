#!/bin/sh
# Scans the gate's TLS surface with sslscan and testssl.sh and fails when it regresses:
# no SSLv2/SSLv3/TLS 1.0/TLS 1.1, TLS 1.2 only with ECDHE + AEAD suites (no CBC, no static
# RSA), and the server's cipher order in force.
# Usage: .ci/tls-scan.sh path/to/miauflix-gate
set -eu
bin=${1:?usage: tls-scan.sh BINARY}
for tool in sslscan testssl; do
    command -v "$tool" >/dev/null || { echo "tls-scan: $tool is not installed (apt-get install -y sslscan testssl.sh dnsutils)"; exit 1; }
done
work=$(mktemp -d)
port=18443
MIAUFLIX_DATA_DIR="$work/data" MIAUFLIX_LISTEN="127.0.0.1:$port" "$bin" >"$work/gate.log" 2>&1 &
gate=$!
trap 'kill "$gate" 2>/dev/null || true; rm -rf "$work"' EXIT
i=0
until MIAUFLIX_DATA_DIR="$work/data" MIAUFLIX_LISTEN="127.0.0.1:$port" "$bin" healthcheck --timeout 1 >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -ge 50 ]; then echo "tls-scan: the gate did not start:"; cat "$work/gate.log"; exit 1; fi
    sleep 0.2
done

fail=0
sslscan --no-colour --xml="$work/scan.xml" "127.0.0.1:$port" >/dev/null
if grep -E '<protocol type="ssl" version="[23]" enabled="1"|<protocol type="tls" version="1\.[01]" enabled="1"' "$work/scan.xml"; then
    echo "tls-scan: FAIL: an obsolete protocol is enabled"; fail=1
fi
if grep -E '<cipher [^>]*sslversion="(SSLv[23]|TLSv1\.0|TLSv1\.1)"' "$work/scan.xml"; then
    echo "tls-scan: FAIL: a cipher is accepted over an obsolete protocol"; fail=1
fi
grep -oE '<cipher [^>]*sslversion="TLSv1\.2"[^>]*cipher="[^"]*"' "$work/scan.xml" | sed 's/.*cipher="//; s/"$//' >"$work/tls12.txt"
if [ ! -s "$work/tls12.txt" ]; then
    echo "tls-scan: FAIL: sslscan found no TLS 1.2 suites (scan broken?)"; fail=1
fi
while read -r suite; do
    case "$suite" in
        ECDHE-*GCM*|ECDHE-*CHACHA20*) ;;
        *) echo "tls-scan: FAIL: TLS 1.2 suite $suite is not ECDHE with an AEAD cipher"; fail=1 ;;
    esac
done <"$work/tls12.txt"

testssl --quiet --color 0 --warnings off --ip 127.0.0.1 -P --jsonfile "$work/testssl.json" "127.0.0.1:$port" >"$work/testssl.txt" 2>&1 || true
order=$(grep -A4 '"id" *: *"cipher_order"' "$work/testssl.json" | grep '"finding"' | sed 's/.*: *"//; s/".*//')
if [ "$order" != "server" ]; then
    echo "tls-scan: FAIL: server cipher order is '$order', expected 'server'"; fail=1
fi

echo "tls-scan: protocols: $(grep -oE '<protocol type="tls" version="[0-9.]+" enabled="1"' "$work/scan.xml" | sed 's/.*version="//; s/".*//' | tr '\n' ' ')"
echo "tls-scan: TLS 1.2 suites: $(tr '\n' ' ' <"$work/tls12.txt")"
echo "tls-scan: server cipher order: $order"
[ $fail -eq 0 ] && echo "tls-scan: OK"
exit $fail
