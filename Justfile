# Recipes mirror README.md.

# Run the gate with embedded defaults on https://127.0.0.1:8443
run:
    cargo run --release

# A static-pie release binary (glibc, crt-static), stripped
release:
    MIAUFLIX_GIT_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown) RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu
    file target/x86_64-unknown-linux-gnu/release/miauflix-gate
    ldd target/x86_64-unknown-linux-gnu/release/miauflix-gate || true
    ls -l target/x86_64-unknown-linux-gnu/release/miauflix-gate
    target/x86_64-unknown-linux-gnu/release/miauflix-gate --version

# The tests that need only the Rust toolchain
test:
    cargo test

# End-to-end suites that need system tools (installs them; needs root)
e2e:
    apt-get install -y -qq openssl passwd shellcheck pebble sslscan testssl.sh util-linux systemd wireguard-go wireguard-tools nftables iproute2
    shellcheck install.sh
    cargo test --features e2e

# Coverage-guided fuzzing of every attacker-facing parser (cargo-afl; FUZZ_SECS per target)
fuzz:
    command -v cargo-afl >/dev/null || cargo install cargo-afl --locked
    bash fuzz/run.sh

# Install as a hardened systemd service (root)
install:
    sh install.sh

# Lints; warnings fail
lint:
    shellcheck install.sh
    cargo fmt --check
    cargo clippy --all-targets --features e2e -- -D warnings

# Benchmarks (print figures)
bench: bench-auth bench-proxy bench-audit bench-tls

# Logins/s, refreshes/s, authenticated GET latency, and latency under a login flood
bench-auth:
    command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
    cargo bench --bench auth

# The gate vs nginx and Caddy as reverse proxies in front of the same loopback upstream
bench-proxy:
    command -v nginx >/dev/null && command -v caddy >/dev/null && command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq nginx caddy wrk curl)
    bash benches/proxy.sh

# Audit log: events/s with group commit vs one commit per event; newest-100 query over 1,000,000 events.
bench-audit:
    cargo bench --bench audit

# Full TLS handshakes/s: the gate vs nginx (Mozilla intermediate) with the same certificate.
bench-tls:
    command -v nginx >/dev/null && command -v curl >/dev/null || (apt-get update -qq && apt-get install -y -qq nginx curl openssl)
    bash benches/tls.sh

# Admin UI in Debian's Chromium via playwright-core, against the real binary
ui-test:
    command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
    cargo build
    cd tests/ui && npm ci --no-audit --no-fund && npm test

# Screenshots of every UI page (light, dark, 360 px) into assets/screenshots/
ui-screenshots:
    cargo build
    cd tests/ui && npm ci --no-audit --no-fund && npm run screenshots

# API fuzzing from the spec: schemathesis (venv .venv-api-fuzz) against the binary, four profiles
fuzz-api:
    cargo build
    bash tests/api_fuzz/run.sh target/debug/miauflix-gate
