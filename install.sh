#!/bin/sh
# Installs miauflix-gate as a hardened systemd service.
#   sh install.sh [--binary PATH] [--destdir DIR] [--no-start] [--uninstall] [--purge [--yes]] [--help]
# Idempotent: a second run changes nothing and never overwrites an existing config.
set -eu

NAME=miauflix-gate
BINARY=""
DESTDIR=""
START=1
MODE=install
YES=0

usage() {
    cat <<USAGE
Usage: sh install.sh [options]
  --binary PATH   install this build (default: build a release with cargo)
  --destdir DIR   stage everything under DIR (packaging, tests); no service is started
  --no-start      install but do not start the service
  --uninstall     remove the binary and the unit; keep data and config
  --purge         also remove data and config (asks, unless --yes)
  --yes           do not ask
  --help          this text
USAGE
}

die() { echo "install.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --binary) [ $# -ge 2 ] || die "--binary needs a path"; BINARY=$2; shift 2 ;;
        --destdir) [ $# -ge 2 ] || die "--destdir needs a directory"; DESTDIR=$2; shift 2 ;;
        --no-start) START=0; shift ;;
        --uninstall) MODE=uninstall; shift ;;
        --purge) MODE=purge; shift ;;
        --yes) YES=1; shift ;;
        --help|-h) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "run as root (it creates a system user and writes to /usr/local, /etc and /var/lib)"
[ -z "$DESTDIR" ] || START=0

BIN_PATH="$DESTDIR/usr/local/bin/$NAME"
ETC_DIR="$DESTDIR/etc/$NAME"
CONFIG="$ETC_DIR/config.toml"
DATA_DIR="$DESTDIR/var/lib/$NAME"
UNIT="$DESTDIR/etc/systemd/system/$NAME.service"
HAVE_SYSTEMD=0
if [ -z "$DESTDIR" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then HAVE_SYSTEMD=1; fi

if [ "$MODE" != install ]; then
    if [ "$HAVE_SYSTEMD" -eq 1 ]; then
        systemctl disable --now "$NAME.service" >/dev/null 2>&1 || true
    fi
    rm -f "$BIN_PATH" "$UNIT"
    [ "$HAVE_SYSTEMD" -eq 1 ] && systemctl daemon-reload
    if [ "$MODE" = purge ]; then
        if [ "$YES" -ne 1 ]; then
            printf 'Delete %s and %s (users, keys, audit log)? [y/N] ' "$DATA_DIR" "$ETC_DIR"
            read -r answer || answer=""
            case "$answer" in y|Y|yes) ;; *) echo "kept data and config"; exit 0 ;; esac
        fi
        rm -rf "$DATA_DIR" "$ETC_DIR"
        echo "removed $NAME, its data and its config"
    else
        echo "removed $NAME; data kept in $DATA_DIR, config in $ETC_DIR"
    fi
    exit 0
fi

# The binary: given, or built here.
if [ -z "$BINARY" ]; then
    command -v cargo >/dev/null 2>&1 || die "no --binary given and cargo is not installed"
    (cd "$(dirname "$0")" && cargo build --release --locked) || die "cargo build failed"
    BINARY="$(cd "$(dirname "$0")" && pwd)/target/release/$NAME"
fi
[ -x "$BINARY" ] || die "$BINARY is not an executable"
"$BINARY" --version >/dev/null 2>&1 || die "$BINARY does not run"

# The service user: no login shell, no home.
if ! getent passwd "$NAME" >/dev/null 2>&1; then
    if command -v useradd >/dev/null 2>&1; then
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin --user-group "$NAME"
    else
        adduser -S -D -H -h /nonexistent -s /sbin/nologin "$NAME" 2>/dev/null || die "cannot create user $NAME"
    fi
fi

install -d -m 0755 "$DESTDIR/usr/local/bin" "$DESTDIR/etc/systemd/system"
if ! cmp -s "$BINARY" "$BIN_PATH" 2>/dev/null; then
    install -m 0755 "$BINARY" "$BIN_PATH.new" && mv -f "$BIN_PATH.new" "$BIN_PATH"
fi

install -d -m 0750 -o root -g "$NAME" "$ETC_DIR"
if [ ! -e "$CONFIG" ]; then
    umask 027
    cat > "$CONFIG" <<CONF
# miauflix-gate configuration. Every key is optional; the defaults are shown.
# Any key can also be set from the environment: MIAUFLIX_<KEY>, with __ for nesting
# (e.g. MIAUFLIX_TLS__NAMES='["gate.home.arpa"]'). Check with: miauflix-gate config check

listen = "0.0.0.0:8443"
data_dir = "/var/lib/$NAME"
# http_listen = "0.0.0.0:80"          # plain HTTP: redirects to https
# master_key_file = "/var/lib/$NAME/master.key"

[tls]
# mode = "self-signed"                # self-signed | off (loopback only)
# names = ["gate.home.arpa", "192.168.1.20"]   # extra names for the self-signed certificate

[log]
# level = "info"
# format = "text"                     # text | json

[http]
# cors_origins = []                   # e.g. ["https://app.example"]
# public_origins = []                 # other origins you reach the gate under
# trusted_proxies = []                # CIDRs whose X-Forwarded-For is believed
# body_timeout_secs = 10             # a body for the gate's own API must arrive within this
# max_connections = 4096              # client connections at once (LimitNOFILE below allows 2 each)
# max_connections_per_ip = 256        # per address (IPv6 per /64); trusted proxies exempt

[auth]
# access_ttl_secs = 900
# refresh_idle_secs = 604800
# session_max_secs = 2592000
# max_sessions_per_user = 10
# password_min_length = 12

[lockout]
# max_failures = 5
# window_secs = 900
# base_lock_secs = 60
# max_lock_secs = 3600

# [[routes]]
# prefix = "/api/lists"
# upstream = "http://127.0.0.1:3000"
# min_role = "user"                   # public | guest | user | admin
# requires_vpn = false                # true: 503 whenever the VPN is not up

# The WireGuard tunnel for torrent traffic (needs wireguard-go, nftables, iproute2).
# The private key never goes here: miauflix-gate vpn set-key (reads stdin).
[vpn]
# enabled = false
# interface = "wg0"
# address = ["10.5.0.2/32"]           # the tunnel address your provider gave you
# dns = ["10.5.0.1"]                  # the only DNS the torrent engine may use
# provider = "nordvpn"                # fills the servers from NordVPN's API, daily
# [[vpn.servers]]
# name = "se-1"
# endpoint = "198.51.100.1:51820"
# public_key = "base64..."
# [vpn.health]
# probe = "tcp://203.0.113.10:8080"   # optional target reached through the tunnel
# [vpn.killswitch]
# scope = "uid"                       # uid | all
# uids = [1500]                       # the torrent engine's user
# allow_lan = ["192.168.0.0/16"]
CONF
    chown root:"$NAME" "$CONFIG"
    chmod 0640 "$CONFIG"
fi
"$BIN_PATH" config check --config "$CONFIG" >/dev/null || die "the config at $CONFIG does not validate"

install -d -m 0700 -o "$NAME" -g "$NAME" "$DATA_DIR"

UNIT_TMP="$UNIT.tmp.$$"
cat > "$UNIT_TMP" <<UNITFILE
[Unit]
Description=miauflix-gate: the security gate in front of Miauflix
Documentation=https://github.com/miauflix/miauflix-gate
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=$NAME
Group=$NAME
Environment=MIAUFLIX_CONFIG=/etc/$NAME/config.toml
ExecStart=/usr/local/bin/$NAME serve
Restart=on-failure
RestartSec=2
# Two descriptors per client connection at most (client + upstream) under http.max_connections.
LimitNOFILE=65536
UMask=0077
ProtectSystem=strict
ReadWritePaths=/var/lib/$NAME
# The userspace WireGuard (wireguard-go) keeps its UAPI socket here; kept across restarts so a
# restarted gate finds the tunnel's socket (the kill switch itself lives in nftables).
RuntimeDirectory=wireguard
RuntimeDirectoryMode=0700
RuntimeDirectoryPreserve=yes
ProtectHome=yes
PrivateTmp=yes
NoNewPrivileges=yes
CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_NET_ADMIN
AmbientCapabilities=CAP_NET_BIND_SERVICE CAP_NET_ADMIN
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallFilter=@system-service
SystemCallArchitectures=native
LockPersonality=yes
MemoryDenyWriteExecute=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RemoveIPC=yes

[Install]
WantedBy=multi-user.target
UNITFILE
if cmp -s "$UNIT_TMP" "$UNIT" 2>/dev/null; then rm -f "$UNIT_TMP"; else chmod 0644 "$UNIT_TMP"; mv -f "$UNIT_TMP" "$UNIT"; fi

if [ "$HAVE_SYSTEMD" -eq 1 ]; then
    systemctl daemon-reload
    if [ "$START" -eq 1 ]; then
        systemctl enable --now "$NAME.service" >/dev/null
        systemctl restart "$NAME.service"
        i=0
        until MIAUFLIX_CONFIG=/etc/$NAME/config.toml "$BIN_PATH" healthcheck >/dev/null 2>&1; do
            i=$((i + 1)); [ "$i" -lt 30 ] || die "the service did not become healthy; see: journalctl -u $NAME"
            sleep 1
        done
        echo "$NAME is running: open https://$(hostname):8443/admin/ (self-signed certificate)."
        [ -f "/var/lib/$NAME/setup-token" ] && echo "Setup token for the first admin: /var/lib/$NAME/setup-token (read it as root)."
        echo "Admin commands (as root): MIAUFLIX_CONFIG=/etc/$NAME/config.toml $NAME user list"
    fi
else
    echo "installed under ${DESTDIR:-/}."
    if [ -z "$DESTDIR" ]; then
        echo "No systemd here: run it by hand as the service user, e.g."
        echo "  runuser -u $NAME -- env MIAUFLIX_CONFIG=/etc/$NAME/config.toml /usr/local/bin/$NAME"
    fi
fi
