//! Admin commands as the supervisor runs them.

use zeroize::Zeroizing;

use super::{OVERRIDE_KEY, Phase, Supervisor};
use crate::audit::{EventKind, Severity};
use crate::vpn::{VpnCommand, VpnError, VpnState};

impl Supervisor {
    pub(super) async fn handle(&mut self, cmd: VpnCommand) -> Result<String, VpnError> {
        if self.state == VpnState::Disabled && !matches!(cmd, VpnCommand::SetKey(_)) {
            return Err(VpnError::DisabledByAdmin);
        }
        match cmd {
            VpnCommand::Reconnect => {
                self.ready()?;
                self.attempt(false).await;
                Ok(format!("reconnecting to {}", self.servers[self.pos].name))
            }
            VpnCommand::Rotate => {
                self.ready()?;
                if self.servers.len() < 2 {
                    return Err(VpnError::NothingToRotate);
                }
                self.rotate("admin").await;
                self.attempt(false).await;
                Ok(format!("rotated to {}", self.servers[self.pos].name))
            }
            VpnCommand::SetKey(b64) => {
                let public = crate::vpn::store_key(&self.store, &self.keyring, &b64).await?;
                // store_key accepted it, so it decodes.
                self.key = crate::vpn::decode_key(&b64).map(Zeroizing::new);
                drop(b64);
                self.shared.update(|s| s.public_key = Some(public.clone()));
                tracing::info!(public_key = %public, "VPN private key stored");
                if self.phase == Phase::NoKey {
                    self.phase = Phase::Running;
                    self.set_state(VpnState::Connecting, None);
                    self.attempt(true).await;
                } else if self.phase == Phase::Running {
                    self.attempt(false).await;
                }
                Ok(format!("private key stored; public key {public}"))
            }
            VpnCommand::SetServers(list) => {
                let mut names = std::collections::HashSet::new();
                for (i, s) in list.iter().enumerate() {
                    s.check().map_err(|msg| VpnError::BadServer { index: i, msg })?;
                    if !names.insert(s.name.clone()) {
                        return Err(VpnError::DuplicateServer { index: i, name: s.name.clone() });
                    }
                }
                let bytes = serde_json::to_vec(&list)?;
                self.store.put_meta(OVERRIDE_KEY, Some(bytes)).await?;
                let current = self.servers.get(self.pos).map(|s| s.name.clone());
                self.load_servers().await;
                if self.servers.is_empty() {
                    return Err(VpnError::NoServers);
                }
                if matches!(self.phase, Phase::AwaitingList { .. }) {
                    self.list_arrived().await;
                    return Ok(format!("{} servers in effect", self.servers.len()));
                }
                self.pos = current.and_then(|n| self.servers.iter().position(|s| s.name == n)).unwrap_or(0);
                self.save_position(self.pos).await;
                if !self.phase.halted() {
                    self.engage().await?;
                    self.attempt(false).await;
                }
                Ok(format!("{} servers in effect", self.servers.len()))
            }
            VpnCommand::Disable => {
                if let Some(mut c) = self.child.take() {
                    let _ = c.kill().await;
                }
                let removed = crate::vpn::tear_down(&self.cfg).await?;
                self.phase = Phase::Halted;
                self.next_attempt = None;
                self.set_state(VpnState::Disabled, Some("disabled by an admin until the next start".into()));
                self.refresh_killswitch_view().await;
                if removed {
                    self.audit.record_background(
                        self.event(EventKind::KillswitchReleased, Severity::Warning).detail("reason", "vpn disable"),
                    );
                }
                Ok("tunnel stopped and kill switch removed until the next start".into())
            }
        }
    }

    pub(super) fn ready(&self) -> Result<(), VpnError> {
        if self.state == VpnState::Unavailable {
            return Err(VpnError::Unavailable(self.shared.get().reason.unwrap_or_default()));
        }
        Ok(())
    }
}
