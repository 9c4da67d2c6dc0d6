#!/usr/bin/env bash
# API fuzzing from the spec: schemathesis against the running binary, in four profiles
# (anonymous, guest, user, admin). The admin profile runs on a throwaway gate of its own,
# so what it creates, disables or deletes cannot spoil the other three.
# Usage: tests/api_fuzz/run.sh [BINARY]   (default: target/debug/miauflix-gate)
# Env: API_FUZZ_EXAMPLES (examples per operation, default 200), API_FUZZ_VENV (a venv with
# schemathesis; default .venv-api-fuzz, created when missing), API_FUZZ_PROFILES.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=$(realpath "${1:-$root/target/debug/miauflix-gate}")
examples=${API_FUZZ_EXAMPLES:-200}
profiles=${API_FUZZ_PROFILES:-anonymous guest user admin}
venv=${API_FUZZ_VENV:-$root/.venv-api-fuzz}
[ -x "$bin" ] || { echo "api-fuzz: no gate binary at $bin (cargo build first)"; exit 1; }
if [ ! -x "$venv/bin/st" ]; then
    command -v python3 >/dev/null || { echo "api-fuzz: python3 is not installed"; exit 1; }
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
fi
work=$(mktemp -d)
pids=()
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# start_gate NAME PORT: a gate with a fresh data directory; prints nothing, fails loudly.
start_gate() {
    local name=$1 port=$2 data="$work/$1"
    mkdir -p "$data"
    MIAUFLIX_DATA_DIR="$data/data" MIAUFLIX_LISTEN="127.0.0.1:$port" \
        "$bin" --config "$here/gate.toml" >"$data/gate.log" 2>&1 &
    pids+=("$!")
    local i=0
    until MIAUFLIX_DATA_DIR="$data/data" MIAUFLIX_LISTEN="127.0.0.1:$port" "$bin" --config "$here/gate.toml" \
        healthcheck --timeout 1 >/dev/null 2>&1; do
        i=$((i + 1))
        if [ $i -ge 100 ]; then echo "api-fuzz: the $name gate did not start:"; cat "$data/gate.log"; exit 1; fi
        sleep 0.2
    done
    local url="https://localhost:$port" ca="$data/data/self-signed.pem"
    curl -fsS --cacert "$ca" "$url/api/auth/setup" -H 'content-type: application/json' \
        -d "{\"email\":\"admin@fuzz.test\",\"password\":\"admin passphrase $name\",\"setupToken\":\"$(cat "$data/data/setup-token")\"}" >/dev/null
    for role in guest user; do
        printf '%s passphrase %s\n' "$role" "$name" | MIAUFLIX_DATA_DIR="$data/data" \
            "$bin" --config "$here/gate.toml" user add --email "$role@fuzz.test" --role "$role" >/dev/null
    done
}

start_gate shared 18601
start_gate throwaway 18602

# run_profile PROFILE: one schemathesis run, its report in $work/PROFILE.log.
run_profile() {
    local profile=$1 gate=shared port=18601
    if [ "$profile" = admin ]; then gate=throwaway port=18602; fi
    local url="https://localhost:$port"
    API_FUZZ_PROFILE=$profile API_FUZZ_URL=$url API_FUZZ_CA="$work/$gate/data/self-signed.pem" \
        API_FUZZ_EMAIL="$profile@fuzz.test" API_FUZZ_PASSWORD="$profile passphrase $gate" \
        API_FUZZ_BIN="$bin" API_FUZZ_DATA="$work/$gate/data" \
        SCHEMATHESIS_HOOKS=hooks PYTHONPATH="$here" \
        "$venv/bin/st" --config-file "$here/schemathesis.toml" run "$url/api/openapi.json" \
        --tls-verify "$work/$gate/data/self-signed.pem" --max-examples "$examples" \
        --report junit --report-dir "$work/report-$profile" --no-color >"$work/$profile.log" 2>&1
}

# Schemathesis generates on one core: two profiles at a time (guest and user cannot touch
# each other's accounts; admin has its own gate).
fail=0
read -r -a queue <<<"$profiles"
set -- "${queue[@]}"
while [ $# -gt 0 ]; do
    batch=("$1"); shift
    if [ $# -gt 0 ]; then batch+=("$1"); shift; fi
    running=()
    for profile in "${batch[@]}"; do
        echo "== api-fuzz: profile $profile ($examples examples per operation)"
        run_profile "$profile" &
        running+=("$!")
    done
    for i in "${!batch[@]}"; do
        if wait "${running[$i]}"; then status=passed; else status=FAILED; fail=1; fi
        echo "== api-fuzz: profile ${batch[$i]}: $status"
        log="$work/${batch[$i]}.log"
        if [ $status = FAILED ]; then cat "$log"; else grep -E "Scenarios:|API Links:" "$log" || true; tail -n 12 "$log"; fi
    done
done
for gate in shared throwaway; do
    if grep -E '^[^ ]+ +ERROR |panicked' "$work/$gate/gate.log" >/dev/null; then
        echo "api-fuzz: the $gate gate logged an error or a panic:"
        grep -E '^[^ ]+ +ERROR |panicked' "$work/$gate/gate.log" | head -20
        fail=1
    fi
done
[ $fail -eq 0 ] && echo "api-fuzz: OK"
exit $fail
