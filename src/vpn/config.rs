//! `[vpn]`: the WireGuard tunnel that torrent traffic must use — the section's types, their
//! defaults and the checks types alone cannot make. `config` composes it.

use serde::{Deserialize, Serialize};

use crate::validate::{ConfigError, is_dns_name};

/// `[vpn]`: the WireGuard tunnel that torrent traffic must use.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VpnConfig {
    pub enabled: bool,
    /// Interface name (at most 15 characters).
    pub interface: String,
    pub backend: VpnBackend,
    /// Tunnel addresses (CIDR), e.g. `10.5.0.2/32`.
    pub address: Vec<ipnet::IpNet>,
    /// DNS servers reached through the tunnel; the only DNS the kill switch lets through.
    pub dns: Vec<std::net::IpAddr>,
    /// `nordvpn` fills the servers from NordVPN's recommendation API.
    pub provider: Option<VpnProvider>,
    pub nordvpn: NordVpnConfig,
    pub servers: Vec<VpnServer>,
    pub health: VpnHealthConfig,
    pub reconnect: VpnReconnectConfig,
    pub killswitch: KillswitchConfig,
}

impl Default for VpnConfig {
    fn default() -> Self {
        VpnConfig {
            enabled: false,
            interface: "wg0".into(),
            backend: VpnBackend::Auto,
            address: Vec::new(),
            dns: Vec::new(),
            provider: None,
            nordvpn: NordVpnConfig::default(),
            servers: Vec::new(),
            health: VpnHealthConfig::default(),
            reconnect: VpnReconnectConfig::default(),
            killswitch: KillswitchConfig::default(),
        }
    }
}

/// How the WireGuard interface is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VpnBackend {
    /// Kernel WireGuard configured over netlink (not in this build: see README).
    Kernel,
    /// A supervised `wireguard-go` child configured over its UAPI socket.
    Userspace,
    /// Userspace (the kernel backend is not in this build).
    Auto,
}

/// Server list providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VpnProvider {
    Nordvpn,
}

/// `[vpn.nordvpn]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NordVpnConfig {
    /// API base URL (`https://api.nordvpn.com`).
    pub api_base: String,
    /// NordVPN country id filter (e.g. 208 for Sweden); all countries when unset.
    pub country_id: Option<u32>,
    /// How many recommended servers to keep.
    pub limit: u32,
    /// How often the list is refreshed.
    pub refresh_secs: u64,
}

impl Default for NordVpnConfig {
    fn default() -> Self {
        NordVpnConfig { api_base: "https://api.nordvpn.com".into(), country_id: None, limit: 5, refresh_secs: 86_400 }
    }
}

/// `[[vpn.servers]]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VpnServer {
    pub name: String,
    /// `ip:port` (a host name is resolved when the server is applied).
    pub endpoint: String,
    /// The server's WireGuard public key (base64).
    pub public_key: String,
    #[serde(default = "default_allowed_ips")]
    pub allowed_ips: Vec<ipnet::IpNet>,
}

fn default_allowed_ips() -> Vec<ipnet::IpNet> {
    vec!["0.0.0.0/0".parse().expect("static CIDR")]
}

impl VpnServer {
    /// Checks one server entry; the message names the field.
    pub fn check(&self) -> Result<(), String> {
        if self.name.trim().is_empty() || self.name.len() > 64 || self.name.chars().any(char::is_control) {
            return Err("name must be 1 to 64 printable characters".into());
        }
        match self.endpoint.rsplit_once(':') {
            Some((host, port))
                if port.parse::<u16>().is_ok_and(|p| p > 0)
                    && (host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok() || is_dns_name(host)) => {}
            _ => return Err(format!("endpoint `{}` must be host:port", self.endpoint)),
        }
        if super::decode_key(&self.public_key).is_none() {
            return Err("public_key must be a base64 WireGuard key (32 bytes)".into());
        }
        if self.allowed_ips.is_empty() {
            return Err("allowed_ips must not be empty".into());
        }
        Ok(())
    }
}

/// `[vpn.health]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VpnHealthConfig {
    pub interval_secs: u64,
    /// A handshake older than this counts as a failed check.
    pub handshake_max_age_secs: u64,
    /// `tcp://ip:port` reached through the tunnel on every check.
    pub probe: Option<String>,
    pub failures_to_down: u32,
    pub successes_to_up: u32,
}

impl Default for VpnHealthConfig {
    fn default() -> Self {
        VpnHealthConfig {
            interval_secs: 5,
            handshake_max_age_secs: 180,
            probe: None,
            failures_to_down: 2,
            successes_to_up: 2,
        }
    }
}

impl VpnHealthConfig {
    /// The probe target, when one is configured.
    pub fn probe_addr(&self) -> Option<std::net::SocketAddr> {
        self.probe.as_deref().and_then(|p| p.strip_prefix("tcp://")).and_then(|a| a.parse().ok())
    }
}

/// `[vpn.reconnect]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VpnReconnectConfig {
    pub backoff_base_secs: u64,
    pub backoff_max_secs: u64,
    /// Failed attempts on one server before the next server is tried.
    pub rotate_after_failures: u32,
}

impl Default for VpnReconnectConfig {
    fn default() -> Self {
        VpnReconnectConfig { backoff_base_secs: 2, backoff_max_secs: 300, rotate_after_failures: 3 }
    }
}

/// Which local traffic the kill switch confines to the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KillswitchScope {
    /// Sockets owned by the listed uids (the torrent engine's user).
    Uid,
    /// Sockets of processes in the listed cgroups (not in this build: see README).
    Cgroup,
    /// Every local process.
    All,
}

/// `[vpn.killswitch]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KillswitchConfig {
    pub enabled: bool,
    pub scope: KillswitchScope,
    pub uids: Vec<u32>,
    pub cgroups: Vec<String>,
    /// Local networks the traffic in scope may still reach.
    pub allow_lan: Vec<ipnet::IpNet>,
}

impl Default for KillswitchConfig {
    fn default() -> Self {
        KillswitchConfig {
            enabled: true,
            scope: KillswitchScope::Uid,
            uids: Vec::new(),
            cgroups: Vec::new(),
            allow_lan: Vec::new(),
        }
    }
}

impl VpnConfig {
    /// Checks what types alone cannot; keys are relative to `[vpn]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |k: &str, m: &str| Err(ConfigError::at(k, m));
        if !self.enabled {
            return Ok(());
        }
        let i = &self.interface;
        if i.is_empty() || i.len() > 15 || !i.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return err("interface", "must be 1 to 15 letters, digits, - or _");
        }
        if self.backend == VpnBackend::Kernel {
            return err("backend", "kernel WireGuard is not supported by this build; use userspace or auto");
        }
        if self.address.is_empty() {
            return err("address", "name the tunnel address the provider gave you (e.g. 10.5.0.2/32)");
        }
        if self.servers.is_empty() && self.provider.is_none() {
            return err("servers", "configure at least one [[vpn.servers]] or provider = \"nordvpn\"");
        }
        for (n, s) in self.servers.iter().enumerate() {
            if let Err(m) = s.check() {
                return Err(ConfigError::at(format!("servers[{n}]"), m));
            }
        }
        let names: std::collections::HashSet<_> = self.servers.iter().map(|s| &s.name).collect();
        if names.len() != self.servers.len() {
            return err("servers", "server names must be unique");
        }
        if self.provider == Some(VpnProvider::Nordvpn) {
            let n = &self.nordvpn;
            if !(n.api_base.starts_with("https://") || n.api_base.starts_with("http://")) {
                return err("nordvpn.api_base", "must be an http(s):// URL");
            }
            if !(1..=50).contains(&n.limit) {
                return err("nordvpn.limit", "must be between 1 and 50");
            }
            if n.refresh_secs < 60 {
                return err("nordvpn.refresh_secs", "must be at least 60");
            }
        }
        let h = &self.health;
        if !(1..=3600).contains(&h.interval_secs) {
            return err("health.interval_secs", "must be between 1 and 3600");
        }
        if !(10..=86_400).contains(&h.handshake_max_age_secs) {
            return err("health.handshake_max_age_secs", "must be between 10 and 86400");
        }
        if h.probe.is_some() && h.probe_addr().is_none() {
            return err("health.probe", "must be tcp://ip:port");
        }
        if !(1..=100).contains(&h.failures_to_down) || !(1..=100).contains(&h.successes_to_up) {
            return err("health.failures_to_down", "failures_to_down and successes_to_up must be between 1 and 100");
        }
        let r = &self.reconnect;
        if r.backoff_base_secs == 0 || r.backoff_max_secs < r.backoff_base_secs || r.backoff_max_secs > 86_400 {
            return err("reconnect.backoff_base_secs", "need 1 <= backoff_base_secs <= backoff_max_secs <= 86400");
        }
        if !(1..=100).contains(&r.rotate_after_failures) {
            return err("reconnect.rotate_after_failures", "must be between 1 and 100");
        }
        let k = &self.killswitch;
        if k.enabled {
            match k.scope {
                KillswitchScope::Uid if k.uids.is_empty() => {
                    return err("killswitch.uids", "scope uid needs the torrent engine's uid(s)");
                }
                KillswitchScope::Uid if k.uids.contains(&0) => {
                    return err("killswitch.uids", "uid 0 would confine the gate itself; use scope = \"all\"");
                }
                KillswitchScope::Cgroup => {
                    return err("killswitch.scope", "cgroup scope is not supported by this build; use uid or all");
                }
                _ => {}
            }
        }
        Ok(())
    }
}
