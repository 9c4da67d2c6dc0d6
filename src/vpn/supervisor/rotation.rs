//! The server list (admin override → provider → config) and the rotation through it, whose
//! position is kept in the store.

use std::net::SocketAddr;
use std::time::Instant;

use super::{OVERRIDE_KEY, PROVIDER_KEY, Phase, ROTATION_KEY, Supervisor};
use crate::audit::{EventKind, Severity};
use crate::vpn::config::{VpnProvider, VpnServer};
use crate::vpn::{VpnError, VpnState, nordvpn};

impl Supervisor {
    /// The effective server list: an admin override, else the provider's, else the config's.
    pub(super) async fn load_servers(&mut self) {
        let read = |key: &str| -> Option<Vec<VpnServer>> {
            self.store.get_meta(key).ok().flatten().and_then(|b| serde_json::from_slice(&b).ok())
        };
        if let Some(list) = read(OVERRIDE_KEY).filter(|l| !l.is_empty()) {
            self.servers = list;
        } else if self.cfg.provider == Some(VpnProvider::Nordvpn) {
            if let Some(list) = read(PROVIDER_KEY) {
                self.servers = list;
            }
            self.refresh_provider().await;
        } else {
            self.servers = self.cfg.servers.clone();
        }
        self.publish_servers();
    }

    /// No server list yet: unavailable (routes closed), the next fetch after the reconnect
    /// backoff for `failures` failed fetches.
    pub(super) fn await_list(&mut self, failures: u32) {
        let wait = self.backoff_after(failures);
        self.phase = Phase::AwaitingList { next: Instant::now() + wait, failures: failures + 1 };
        let why = self.shared.get().last_error.unwrap_or_else(|| "no answer".into());
        let reason = format!(
            "no VPN servers yet: the NordVPN list could not be fetched ({why}); next try in {} s",
            wait.as_secs()
        );
        tracing::warn!(reason = %reason, "vpn waiting for its server list");
        self.set_state(VpnState::Unavailable, Some(reason));
    }

    /// A list arrived while start-up waited for one: carry on with it.
    pub(super) async fn list_arrived(&mut self) {
        self.phase = Phase::Running;
        tracing::info!(servers = self.servers.len(), "vpn server list in; starting the tunnel");
        self.set_state(VpnState::Connecting, None);
        self.bring_up().await;
    }

    pub(super) fn publish_servers(&self) {
        *self.shared.servers.write().unwrap_or_else(|e| e.into_inner()) = self.servers.clone();
    }

    /// Fetches NordVPN's recommendations; keeps the last list when that fails.
    pub(super) async fn refresh_provider(&mut self) {
        self.provider_fetched = Some(Instant::now());
        match nordvpn::fetch(&self.cfg.nordvpn).await {
            Ok(list) if !list.is_empty() => {
                tracing::info!(servers = list.len(), "NordVPN server list refreshed");
                if let Ok(bytes) = serde_json::to_vec(&list) {
                    let _ = self.store.put_meta(PROVIDER_KEY, Some(bytes)).await;
                }
                let overridden = self.store.get_meta(OVERRIDE_KEY).ok().flatten().is_some_and(|b| b.len() > 2);
                if !overridden {
                    let current = self.servers.get(self.pos).map(|s| s.name.clone());
                    self.servers = list;
                    self.pos = current.and_then(|n| self.servers.iter().position(|s| s.name == n)).unwrap_or(0);
                    self.publish_servers();
                }
            }
            Ok(_) => {
                tracing::warn!("NordVPN returned no WireGuard servers; keeping the last list");
                self.shared.update(|s| s.last_error = Some("NordVPN returned no WireGuard servers".into()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "NordVPN server list not refreshed; keeping the last list");
                self.shared.update(|s| s.last_error = Some(format!("NordVPN: {e}")));
            }
        }
    }

    pub(super) async fn rotation_position(&mut self) -> usize {
        let n = self.servers.len();
        let stored = self
            .store
            .get_meta(ROTATION_KEY)
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.parse::<usize>().ok());
        match stored {
            Some(p) => p % n,
            None => {
                let p = crate::crypto::random_index(n);
                self.save_position(p).await;
                p
            }
        }
    }

    pub(super) async fn save_position(&self, pos: usize) {
        if let Err(e) = self.store.put_meta(ROTATION_KEY, Some(pos.to_string().into_bytes())).await {
            tracing::error!(error = %e, "could not save the VPN rotation position");
        }
    }

    /// Resolves every server's endpoint (the kill switch lets the tunnel's UDP reach all of
    /// them, so rotation needs no rule change).
    pub(super) async fn endpoints(&self) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for s in &self.servers {
            match resolve(&s.endpoint).await {
                Ok(a) => out.push(a),
                Err(e) => tracing::warn!(server = %s.name, error = %e, "endpoint does not resolve"),
            }
        }
        out
    }

    pub(super) async fn rotate(&mut self, why: &str) {
        let from = self.servers[self.pos].name.clone();
        self.pos = (self.pos + 1) % self.servers.len();
        self.server_failures = 0;
        self.save_position(self.pos).await;
        let to = self.servers[self.pos].name.clone();
        tracing::warn!(from = %from, to = %to, why, "vpn server rotated");
        self.audit.record_background(
            self.event(EventKind::VpnServerRotated, Severity::Info).detail("from", from).detail("reason", why),
        );
    }
}

/// `host:port` → a socket address (first answer).
pub(super) async fn resolve(endpoint: &str) -> Result<SocketAddr, VpnError> {
    if let Ok(a) = endpoint.parse() {
        return Ok(a);
    }
    tokio::net::lookup_host(endpoint)
        .await
        .map_err(|source| VpnError::Resolve { endpoint: endpoint.to_string(), source })?
        .next()
        .ok_or_else(|| VpnError::NoAddress(endpoint.to_string()))
}
