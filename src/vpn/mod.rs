//! The WireGuard supervisor and its public seam.
//!
//! [`VpnStatus`] is what the rest of the gate asks: whether the tunnel is up (routes with
//! `requires_vpn` fail closed otherwise), a [`VpnSnapshot`] for the API, and commands.
//! [`Vpn`] is the real thing: when `vpn.enabled`, a supervisor task ([`supervisor`]) owns the
//! kill switch ([`killswitch`]), the `wireguard-go` child and its UAPI socket ([`uapi`]), the
//! addresses, routes and policy rules ([`netcfg`]) and the server list ([`nordvpn`]).

pub mod config;
mod error;
mod health;
pub mod killswitch;
pub mod netcfg;
pub mod nordvpn;
mod supervisor;
pub mod uapi;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

pub use self::error::VpnError;
pub use self::killswitch::NftError;
pub use self::netcfg::IpError;

use self::config::{VpnConfig, VpnServer};
use crate::crypto::Keyring;
use crate::crypto::sealed::{self, Secret};
use crate::store::{Store, StoreError};

/// Decodes a base64 WireGuard key (32 bytes).
pub fn decode_key(b64: &str) -> Option<[u8; 32]> {
    let bytes = Zeroizing::new(B64.decode(b64.trim()).ok()?);
    <[u8; 32]>::try_from(bytes.as_slice()).ok()
}

/// The public key (base64) belonging to a private key.
pub fn public_key_of(private: &[u8; 32]) -> Option<String> {
    crate::crypto::sign::x25519_public(private).map(|p| B64.encode(p))
}

/// Supervisor states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VpnState {
    /// `vpn.enabled = false` or `vpn disable`.
    Disabled,
    /// Missing capability, tool or key; the reason says which.
    Unavailable,
    Connecting,
    Up,
    /// Some health checks failed, fewer than `failures_to_down`; the tunnel stays configured,
    /// `requires_vpn` routes are closed.
    Degraded,
    Down,
    Reconnecting,
}

impl VpnState {
    pub fn as_str(self) -> &'static str {
        match self {
            VpnState::Disabled => "disabled",
            VpnState::Unavailable => "unavailable",
            VpnState::Connecting => "connecting",
            VpnState::Up => "up",
            VpnState::Degraded => "degraded",
            VpnState::Down => "down",
            VpnState::Reconnecting => "reconnecting",
        }
    }

    /// The number exported as `vpn_state`.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Whether routes that require the VPN may open: only when `up` (a `degraded` tunnel
    /// still carries traffic, but the gate fails closed until it is trusted again).
    pub fn passes(self) -> bool {
        self == VpnState::Up
    }
}

/// Kill-switch facts for the status page.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KillswitchView {
    pub enabled: bool,
    pub installed: bool,
    pub scope: String,
    pub rules: u32,
    pub dropped_packets: u64,
}

/// Everything `GET /api/vpn` (and `vpn status` over the admin socket) shows. Never holds the
/// private key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VpnSnapshot {
    pub state: VpnState,
    /// Unix seconds of the last state change.
    pub since: i64,
    /// Why the state is `unavailable`/`disabled`, or what the last failure was.
    pub reason: Option<String>,
    pub interface: String,
    pub backend: String,
    pub server: Option<String>,
    pub endpoint: Option<String>,
    pub handshake_age_secs: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub last_error: Option<String>,
    pub reconnects: u64,
    pub uptime_ratio_24h: f64,
    /// Public key of the stored private key (what the provider must know).
    pub public_key: Option<String>,
    pub wireguard_pid: Option<u32>,
    pub killswitch: KillswitchView,
}

impl VpnSnapshot {
    fn new(state: VpnState, reason: Option<String>, cfg: &VpnConfig) -> VpnSnapshot {
        VpnSnapshot {
            state,
            since: crate::clock::now(),
            reason,
            interface: cfg.interface.clone(),
            backend: "userspace".into(),
            server: None,
            endpoint: None,
            handshake_age_secs: None,
            rx_bytes: 0,
            tx_bytes: 0,
            last_error: None,
            reconnects: 0,
            uptime_ratio_24h: 0.0,
            public_key: None,
            wireguard_pid: None,
            killswitch: KillswitchView {
                enabled: cfg.killswitch.enabled,
                scope: format!("{:?}", cfg.killswitch.scope).to_lowercase(),
                ..Default::default()
            },
        }
    }
}

/// What an admin may ask of the supervisor.
pub enum VpnCommand {
    Reconnect,
    Rotate,
    /// A base64 private key.
    SetKey(Zeroizing<String>),
    /// Replaces the server list (an empty list returns to the configured/provider list).
    SetServers(Vec<VpnServer>),
    /// Tears the tunnel down and removes the kill switch until the next start.
    Disable,
}

/// What the rest of the gate may ask about the tunnel.
#[async_trait::async_trait]
pub trait VpnStatus: Send + Sync {
    /// Whether traffic that must use the tunnel may flow now.
    fn tunnel_up(&self) -> bool;
    /// A short state name for status pages (`up`, `down`, `disabled`, …).
    fn state(&self) -> &'static str;
    /// The full picture.
    fn snapshot(&self) -> VpnSnapshot;
    /// The servers in effect.
    fn servers(&self) -> Vec<VpnServer>;
    /// Runs an admin command; `Ok` carries a one-line summary.
    async fn command(&self, cmd: VpnCommand) -> Result<String, VpnError>;
}

/// State shared between the supervisor task and readers.
struct Shared {
    up: AtomicBool,
    snap: RwLock<VpnSnapshot>,
    servers: RwLock<Vec<VpnServer>>,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut VpnSnapshot)) {
        let mut s = self.snap.write().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
        self.up.store(s.state.passes(), Ordering::Release);
    }

    fn get(&self) -> VpnSnapshot {
        self.snap.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

type Request = (VpnCommand, oneshot::Sender<Result<String, VpnError>>);

/// The supervisor's handle.
pub struct Vpn {
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<Request>>,
    store: Store,
    keyring: Arc<Keyring>,
}

impl Vpn {
    /// Starts supervising when `vpn.enabled`; otherwise removes a kill switch left by an
    /// earlier configuration and reports `disabled`.
    pub async fn start(cfg: &VpnConfig, store: Store, keyring: Arc<Keyring>, audit: crate::audit::Audit) -> Vpn {
        let (state, reason) = if cfg.enabled {
            (VpnState::Connecting, None)
        } else {
            (VpnState::Disabled, Some("vpn.enabled is false".to_string()))
        };
        let shared = Arc::new(Shared {
            up: AtomicBool::new(false),
            snap: RwLock::new(VpnSnapshot::new(state, reason, cfg)),
            servers: RwLock::new(cfg.servers.clone()),
        });
        if let Ok(Some(key)) = load_key(&store, &keyring) {
            let public = public_key_of(&key);
            shared.update(|s| s.public_key = public);
        }
        if !cfg.enabled {
            metrics::gauge!("vpn_state").set(f64::from(VpnState::Disabled.code()));
            metrics::gauge!("vpn_up").set(0.0);
            supervisor::release_leftovers(cfg, &audit).await;
            return Vpn { shared, tx: None, store, keyring };
        }
        let (tx, rx) = mpsc::channel(16);
        let sup = supervisor::Supervisor::new(cfg.clone(), store.clone(), keyring.clone(), audit, shared.clone());
        tokio::spawn(sup.run(rx));
        Vpn { shared, tx: Some(tx), store, keyring }
    }
}

#[async_trait::async_trait]
impl VpnStatus for Vpn {
    fn tunnel_up(&self) -> bool {
        self.shared.up.load(Ordering::Acquire)
    }

    fn state(&self) -> &'static str {
        self.shared.get().state.as_str()
    }

    fn snapshot(&self) -> VpnSnapshot {
        self.shared.get()
    }

    fn servers(&self) -> Vec<VpnServer> {
        self.shared.servers.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn command(&self, cmd: VpnCommand) -> Result<String, VpnError> {
        let Some(tx) = &self.tx else {
            // Without a supervisor the key can still be stored for later.
            return match cmd {
                VpnCommand::SetKey(k) => {
                    let public = store_key(&self.store, &self.keyring, &k).await?;
                    self.shared.update(|s| s.public_key = Some(public.clone()));
                    Ok(format!("private key stored; public key {public}"))
                }
                _ => Err(VpnError::Disabled),
            };
        };
        let (ack, rx) = oneshot::channel();
        tx.send((cmd, ack)).await.map_err(|_| VpnError::Stopped)?;
        rx.await.map_err(|_| VpnError::Stopped)?
    }
}

const KEY_RECORD: &str = "vpn_private_key";

/// Where the private key is sealed.
pub const SECRET: Secret<'static> = Secret::new("vpn_private_key", KEY_RECORD);

/// The stored private key, unsealed.
pub fn load_key(store: &Store, keyring: &Keyring) -> Result<Option<Zeroizing<[u8; 32]>>, StoreError> {
    let Some(plain) = sealed::get(store, keyring, &SECRET)? else { return Ok(None) };
    let key = <[u8; 32]>::try_from(plain.as_slice()).map_err(|_| StoreError::Codec("bad VPN key length".into()))?;
    Ok(Some(Zeroizing::new(key)))
}

/// Checks and seals a base64 private key; returns its public key.
pub async fn store_key(store: &Store, keyring: &Keyring, b64: &str) -> Result<String, VpnError> {
    let key = Zeroizing::new(decode_key(b64).ok_or(VpnError::BadKey)?);
    let public = public_key_of(&key).ok_or(VpnError::UnusableKey)?;
    sealed::put(store, keyring, &SECRET, key.as_slice()).await?;
    Ok(public)
}

/// Re-seals the private key with the active data key (key rotation); `true` if there was one.
pub async fn reencrypt(store: &Store, keyring: &Keyring) -> Result<bool, StoreError> {
    Ok(sealed::reseal_record(store, keyring, &SECRET).await?)
}

/// Removes the kill switch, the policy rules and the interface (offline `vpn disable`).
pub async fn tear_down(cfg: &VpnConfig) -> Result<bool, NftError> {
    netcfg::delete_link(&cfg.interface).await;
    netcfg::remove_rules().await;
    netcfg::flush_table().await;
    killswitch::remove().await
}
