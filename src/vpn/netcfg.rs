//! Addresses, routes and policy rules for the tunnel, set with iproute2's `ip` (argv carries
//! only interface names, addresses and numbers; never key material).
//!
//! The traffic in scope is routed by policy into table [`TABLE`]: a default route through
//! the tunnel plus an `unreachable` fallback, so a vanished interface means "no route", not
//! "the main route". `uid` scope: `ip rule uidrange`, with the `allow_lan` networks sent to
//! the main table; `all` scope: wg-quick's rules (everything not carrying the tunnel's own
//! fwmark, with the main table's specific routes kept).

use tokio::process::Command;

use super::config::{KillswitchScope, VpnConfig};

/// The policy-routing table of the tunnel.
pub const TABLE: u32 = 0x4d47;
/// The fwmark on the tunnel's own UDP (set on the WireGuard socket).
pub const FWMARK: u32 = 0x4d47;
/// Rule priorities owned by the gate.
const PREF_LAN: u32 = 10090;
const PREF_SUPPRESS: u32 = 10091;
const PREF_TUNNEL: u32 = 10100;

/// Why an `ip` command failed.
#[derive(Debug, thiserror::Error)]
pub enum IpError {
    #[error("cannot run ip: {0}")]
    Spawn(#[source] std::io::Error),
    /// `ip` ran and refused: its arguments and the first line it printed.
    #[error("ip {args}: {msg}")]
    Refused { args: String, msg: String },
}

async fn ip(args: &[&str]) -> Result<(), IpError> {
    let out = Command::new("ip").args(args).kill_on_drop(true).output().await.map_err(IpError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        let msg = String::from_utf8_lossy(&out.stderr);
        Err(IpError::Refused { args: args.join(" "), msg: msg.lines().next().unwrap_or("failed").to_string() })
    }
}

/// Whether `iface` exists in this network namespace.
pub fn link_exists(iface: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(iface).exists()
}

/// Brings the interface up with its addresses and the routes of `allowed_ips` into [`TABLE`].
pub async fn configure_link(cfg: &VpnConfig, allowed_ips: &[ipnet::IpNet]) -> Result<(), IpError> {
    let i = cfg.interface.as_str();
    for addr in &cfg.address {
        ip(&["address", "replace", &addr.to_string(), "dev", i]).await?;
    }
    ip(&["link", "set", "mtu", "1420", "up", "dev", i]).await?;
    let table = TABLE.to_string();
    for net in allowed_ips {
        let fam = if net.addr().is_ipv4() { "-4" } else { "-6" };
        ip(&[fam, "route", "replace", &net.to_string(), "dev", i, "table", &table]).await?;
    }
    Ok(())
}

/// The `unreachable` fallbacks and the policy rules; kept when the gate exits, like the kill switch.
pub async fn install_rules(cfg: &VpnConfig) -> Result<(), IpError> {
    remove_rules().await;
    let table = TABLE.to_string();
    ip(&["-4", "route", "replace", "unreachable", "default", "metric", "4096", "table", &table]).await?;
    let v6 = std::path::Path::new("/proc/sys/net/ipv6").exists();
    if v6 {
        // Best effort: IPv6 may be disabled; then the kill switch still drops it.
        let _ = ip(&["-6", "route", "replace", "unreachable", "default", "metric", "4096", "table", &table]).await;
    }
    let families: &[&str] = if v6 { &["-4", "-6"] } else { &["-4"] };
    let (lan, tunnel, suppress) = (PREF_LAN.to_string(), PREF_TUNNEL.to_string(), PREF_SUPPRESS.to_string());
    match cfg.killswitch.scope {
        KillswitchScope::All => {
            let mark = FWMARK.to_string();
            for fam in families {
                ip(&[fam, "rule", "add", "not", "fwmark", &mark, "lookup", &table, "pref", &tunnel]).await?;
                ip(&[fam, "rule", "add", "lookup", "main", "suppress_prefixlength", "0", "pref", &suppress]).await?;
            }
        }
        _ => {
            for uid in &cfg.killswitch.uids {
                let range = format!("{uid}-{uid}");
                for net in &cfg.killswitch.allow_lan {
                    let fam = if net.addr().is_ipv4() { "-4" } else { "-6" };
                    if fam == "-6" && !v6 {
                        continue;
                    }
                    let to = net.to_string();
                    ip(&[fam, "rule", "add", "uidrange", &range, "to", &to, "lookup", "main", "pref", &lan]).await?;
                }
                for fam in families {
                    ip(&[fam, "rule", "add", "uidrange", &range, "lookup", &table, "pref", &tunnel]).await?;
                }
            }
        }
    }
    Ok(())
}

/// Removes the gate's policy rules (both families) and flushes its table.
pub async fn remove_rules() {
    for fam in ["-4", "-6"] {
        for pref in [PREF_LAN, PREF_SUPPRESS, PREF_TUNNEL] {
            // One rule per call; stop when none is left (bounded, in case ip misbehaves).
            for _ in 0..256 {
                if ip(&[fam, "rule", "del", "pref", &pref.to_string()]).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Flushes the tunnel's routing table (only on `vpn disable`).
pub async fn flush_table() {
    for fam in ["-4", "-6"] {
        let _ = ip(&[fam, "route", "flush", "table", &TABLE.to_string()]).await;
    }
}

/// Deletes the interface (which also ends a userspace `wireguard-go`).
pub async fn delete_link(iface: &str) {
    if link_exists(iface) {
        let _ = ip(&["link", "del", "dev", iface]).await;
    }
}
