//! Why a VPN operation failed. `Display` is the one line an admin sees (the API's
//! `vpn-refused` detail, the CLI's error, the status page's `reason` and `lastError`); the
//! cause, when there is one, stays attached as the source.

use super::killswitch::NftError;
use super::netcfg::IpError;
use crate::crypto::sealed::SealedError;
use crate::store::StoreError;

/// Why the probe through the tunnel failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("probe socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("probe {addr}: {source}")]
    Connect {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("probe {addr}: no answer within {secs} s")]
    Timeout { addr: std::net::SocketAddr, secs: u64 },
}

/// A refused command or a failed step of bringing the tunnel up.
#[derive(Debug, thiserror::Error)]
pub enum VpnError {
    #[error("the VPN is disabled (vpn.enabled = false, or `vpn disable` ran)")]
    Disabled,
    #[error("the VPN was disabled by `vpn disable`; restart the gate to enable it")]
    DisabledByAdmin,
    /// The reason the status shows for `unavailable`.
    #[error("the VPN is unavailable: {0}")]
    Unavailable(String),
    #[error("the VPN supervisor has stopped")]
    Stopped,
    #[error("the private key must be a base64 WireGuard key (32 bytes)")]
    BadKey,
    #[error("not a usable X25519 private key")]
    UnusableKey,
    #[error("no private key")]
    NoKey,
    #[error("only one server is configured; nothing to rotate to")]
    NothingToRotate,
    /// A server of a new list fails [`VpnServer::check`](super::config::VpnServer::check),
    /// whose message names the field.
    #[error("servers[{index}]: {msg}")]
    BadServer { index: usize, msg: String },
    #[error("servers[{index}]: name `{name}` is used twice")]
    DuplicateServer { index: usize, name: String },
    #[error("no servers left: configure [[vpn.servers]] or give a list")]
    NoServers,
    #[error("bad server public key")]
    BadServerKey,
    #[error("cannot resolve {endpoint}: {source}")]
    Resolve {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} has no address")]
    NoAddress(String),
    #[error("wireguard-go is not installed")]
    NoWireguard,
    #[error("cannot start wireguard-go: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("wireguard-go exited at start ({0})")]
    ExitedAtStart(std::process::ExitStatus),
    #[error("wireguard-go did not open its UAPI socket within 5 s")]
    NoUapiSocket,
    #[error("UAPI: {0}")]
    Uapi(#[source] std::io::Error),
    #[error(transparent)]
    Killswitch(#[from] NftError),
    #[error(transparent)]
    Net(#[from] IpError),
    #[error("{0}")]
    Sealed(#[from] SealedError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Encode(#[from] serde_json::Error),
}
