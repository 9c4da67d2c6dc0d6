//! `/api/vpn` (admin): the WireGuard supervisor's state, reconnect, rotate, the write-only
//! private key and the server list. No response carries the private key.

use std::sync::Arc;

use poem::Request;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use zeroize::Zeroizing;

use super::ApiTags;
use crate::audit::{EventKind, SecurityEvent, Severity};
use crate::auth::Role;
use crate::http::AppState;
use crate::http::context::client_info;
use crate::http::credentials::Auth;
use crate::http::problem::ApiError;
use crate::vpn::{VpnCommand, VpnSnapshot};

pub struct VpnApi {
    pub state: Arc<AppState>,
}

/// The kill switch as read back from nftables.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct KillswitchDto {
    pub enabled: bool,
    /// The gate's nftables table is in the kernel.
    pub installed: bool,
    /// `uid` or `all`.
    pub scope: String,
    pub rules: u32,
    /// Packets the final drop rule has stopped.
    pub dropped_packets: u64,
}

/// Tunnel state.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct VpnStatusDto {
    /// `disabled`, `unavailable`, `connecting`, `up`, `degraded`, `down` or `reconnecting`.
    pub state: String,
    /// When the state last changed (Unix seconds).
    pub since: i64,
    /// Why the VPN is unavailable or disabled, or what last failed.
    #[oai(nullable)]
    pub reason: Option<String>,
    pub interface: String,
    pub backend: String,
    #[oai(nullable)]
    pub server: Option<String>,
    #[oai(nullable)]
    pub endpoint: Option<String>,
    #[oai(nullable)]
    pub handshake_age_secs: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    #[oai(nullable)]
    pub last_error: Option<String>,
    pub reconnects: u64,
    /// Share of the last 24 hours the tunnel was up (0..1).
    pub uptime_ratio_24h: f64,
    /// The public key that belongs to the stored private key.
    #[oai(nullable)]
    pub public_key: Option<String>,
    #[oai(nullable)]
    pub wireguard_pid: Option<u32>,
    pub killswitch: KillswitchDto,
}

impl From<VpnSnapshot> for VpnStatusDto {
    fn from(s: VpnSnapshot) -> Self {
        VpnStatusDto {
            state: s.state.as_str().into(),
            since: s.since,
            reason: s.reason,
            interface: s.interface,
            backend: s.backend,
            server: s.server,
            endpoint: s.endpoint,
            handshake_age_secs: s.handshake_age_secs,
            rx_bytes: s.rx_bytes,
            tx_bytes: s.tx_bytes,
            last_error: s.last_error,
            reconnects: s.reconnects,
            uptime_ratio_24h: s.uptime_ratio_24h,
            public_key: s.public_key,
            wireguard_pid: s.wireguard_pid,
            killswitch: KillswitchDto {
                enabled: s.killswitch.enabled,
                installed: s.killswitch.installed,
                scope: s.killswitch.scope,
                rules: s.killswitch.rules,
                dropped_packets: s.killswitch.dropped_packets,
            },
        }
    }
}

/// The WireGuard private key (write-only).
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct VpnKeyBody {
    /// Base64, 32 bytes (as `wg genkey` prints it, or NordLynx's key).
    #[oai(validator(min_length = 40, max_length = 64), write_only)]
    pub private_key: String,
}

/// One WireGuard server.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct VpnServerDto {
    #[oai(validator(min_length = 1, max_length = 64))]
    pub name: String,
    /// `host:port`
    #[oai(validator(min_length = 3, max_length = 300))]
    pub endpoint: String,
    /// The server's public key (base64).
    #[oai(validator(min_length = 40, max_length = 64))]
    pub public_key: String,
    /// CIDRs routed through the tunnel (default `0.0.0.0/0`).
    #[oai(default)]
    pub allowed_ips: Vec<String>,
}

/// The server list; an empty list in a PUT returns to the configured (or provider) list.
#[derive(Object)]
pub struct VpnServersDto {
    #[oai(validator(max_items = 200))]
    pub servers: Vec<VpnServerDto>,
}

/// The outcome of a command.
#[derive(Object)]
pub struct VpnActionDto {
    pub message: String,
    pub state: String,
}

fn refused(e: crate::vpn::VpnError) -> ApiError {
    ApiError::new(poem::http::StatusCode::CONFLICT, "vpn-refused", "VPN command refused", e.to_string())
}

#[OpenApi(tag = "ApiTags::Vpn")]
impl VpnApi {
    async fn run(&self, cmd: VpnCommand) -> poem::Result<Json<VpnActionDto>> {
        let message = self.state.vpn.command(cmd).await.map_err(refused)?;
        Ok(Json(VpnActionDto { message, state: self.state.vpn.state().into() }))
    }

    /// Tunnel state, server, handshake age, traffic counters, last error and kill switch.
    ///
    /// Minimum role: admin.
    #[oai(path = "/api/vpn", method = "get")]
    async fn status(&self, auth: Auth) -> poem::Result<Json<VpnStatusDto>> {
        auth.require(Role::Admin)?;
        Ok(Json(self.state.vpn.snapshot().into()))
    }

    /// Reconnects to the current server now.
    ///
    /// Minimum role: admin.
    #[oai(path = "/api/vpn/reconnect", method = "post")]
    async fn reconnect(&self, auth: Auth) -> poem::Result<Json<VpnActionDto>> {
        auth.require(Role::Admin)?;
        self.run(VpnCommand::Reconnect).await
    }

    /// Moves to the next server in the rotation and connects.
    ///
    /// Minimum role: admin.
    #[oai(path = "/api/vpn/rotate", method = "post")]
    async fn rotate(&self, auth: Auth) -> poem::Result<Json<VpnActionDto>> {
        auth.require(Role::Admin)?;
        self.run(VpnCommand::Rotate).await
    }

    /// Stores the WireGuard private key, sealed by the keyring, and reconnects with it. The
    /// key can never be read back; the answer names its public key.
    ///
    /// Minimum role: admin.
    #[oai(path = "/api/vpn/key", method = "put")]
    async fn set_key(&self, auth: Auth, req: &Request, body: Json<VpnKeyBody>) -> poem::Result<Json<VpnActionDto>> {
        let actor = auth.require(Role::Admin)?;
        let key = Zeroizing::new(body.0.private_key);
        if crate::vpn::decode_key(&key).is_none() {
            return Err(ApiError::bad_request(
                "This is not a WireGuard private half: 32 bytes in base64 are expected.",
            )
            .into());
        }
        let out = self.run(VpnCommand::SetKey(key)).await?;
        SecurityEvent::new(EventKind::ConfigChanged, Severity::Info, &client_info(req))
            .actor(&actor.user_id)
            .detail("sections", "vpn.key")
            .record(self.state.auth.audit())
            .await;
        Ok(out)
    }

    /// The servers in effect, in rotation order.
    ///
    /// Minimum role: admin.
    #[oai(path = "/api/vpn/servers", method = "get")]
    async fn servers(&self, auth: Auth) -> poem::Result<Json<VpnServersDto>> {
        auth.require(Role::Admin)?;
        let servers = self
            .state
            .vpn
            .servers()
            .into_iter()
            .map(|s| VpnServerDto {
                name: s.name,
                endpoint: s.endpoint,
                public_key: s.public_key,
                allowed_ips: s.allowed_ips.iter().map(|n| n.to_string()).collect(),
            })
            .collect();
        Ok(Json(VpnServersDto { servers }))
    }

    /// Replaces the server list (kept in the store, ahead of the config and the provider).
    ///
    /// Minimum role: admin.
    #[oai(path = "/api/vpn/servers", method = "put")]
    async fn set_servers(
        &self,
        auth: Auth,
        req: &Request,
        body: Json<VpnServersDto>,
    ) -> poem::Result<Json<VpnActionDto>> {
        let actor = auth.require(Role::Admin)?;
        let mut list = Vec::with_capacity(body.0.servers.len());
        for (i, s) in body.0.servers.into_iter().enumerate() {
            let allowed_ips = if s.allowed_ips.is_empty() {
                vec!["0.0.0.0/0".parse().expect("static CIDR")]
            } else {
                s.allowed_ips
                    .iter()
                    .map(|n| n.parse::<ipnet::IpNet>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| ApiError::bad_request(format!("servers[{i}].allowedIps: not a CIDR list")))?
            };
            let server =
                crate::config::VpnServer { name: s.name, endpoint: s.endpoint, public_key: s.public_key, allowed_ips };
            // The config check names TOML fields (`public_key`); a client must not see that word.
            if crate::vpn::decode_key(&server.public_key).is_none() {
                return Err(ApiError::bad_request(format!(
                    "servers[{i}]: the server's WireGuard public half must be 32 bytes in base64."
                ))
                .into());
            }
            server.check().map_err(|m| ApiError::bad_request(format!("servers[{i}]: {m}")))?;
            list.push(server);
        }
        let out = self.run(VpnCommand::SetServers(list)).await?;
        SecurityEvent::new(EventKind::ConfigChanged, Severity::Info, &client_info(req))
            .actor(&actor.user_id)
            .detail("sections", "vpn.servers")
            .record(self.state.auth.audit())
            .await;
        Ok(out)
    }
}
