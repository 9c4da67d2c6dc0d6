//! The `wireguard-go` child: finding the tools, starting or adopting the process, configuring it
//! over UAPI, and noticing when it is gone.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::rotation::resolve;
use super::{KEEPALIVE_SECS, Supervisor};
use crate::vpn::{VpnError, netcfg, uapi};

/// Finds an executable on `PATH`.
pub(super) fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Whether this process holds CAP_NET_ADMIN (bit 12 of `CapEff`).
pub(super) fn has_net_admin() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 12) != 0)
}

/// The pid of the `wireguard-go` serving `iface`, ours or adopted.
pub(super) fn wireguard_pid(iface: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
        if args.first().is_some_and(|a| a.ends_with(b"wireguard-go")) && args.last() == Some(&iface.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

pub(super) async fn wait_child(child: &mut Option<Child>) -> std::io::Result<std::process::ExitStatus> {
    match child.as_mut() {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

impl Supervisor {
    pub(super) async fn apply(&mut self, adopt: bool) -> Result<(), VpnError> {
        let server = self.servers[self.pos].clone();
        let key = self.key.clone().ok_or(VpnError::NoKey)?;
        self.ensure_wireguard().await?;
        let endpoint = resolve(&server.endpoint).await?;
        let peer_key = crate::vpn::decode_key(&server.public_key).ok_or(VpnError::BadServerKey)?;
        let dev = uapi::get(&self.sock).await.map_err(VpnError::Uapi)?;
        let in_place = dev.has_private_key
            && dev.fwmark == netcfg::FWMARK
            && dev.peers.len() == 1
            && dev.peers[0].public_key == peer_key
            && dev.peers[0].endpoint.as_deref() == Some(endpoint.to_string().as_str());
        if adopt && in_place {
            tracing::info!(server = %server.name, "wireguard-go already runs this server's peer; adopted");
        } else {
            let settings = uapi::Settings {
                private_key: &key,
                fwmark: netcfg::FWMARK,
                peer_public_key: peer_key,
                replace_peers: true,
                endpoint,
                allowed_ips: &server.allowed_ips,
                keepalive_secs: KEEPALIVE_SECS,
            };
            uapi::set(&self.sock, &settings).await.map_err(VpnError::Uapi)?;
        }
        netcfg::configure_link(&self.cfg, &server.allowed_ips).await?;
        let pid = wireguard_pid(&self.cfg.interface);
        self.shared.update(|s| {
            s.server = Some(server.name.clone());
            s.endpoint = Some(endpoint.to_string());
            s.wireguard_pid = pid;
        });
        Ok(())
    }

    /// Makes sure a `wireguard-go` answers on the UAPI socket: the one running (ours or left
    /// by an earlier run of the gate), else a new child.
    pub(super) async fn ensure_wireguard(&mut self) -> Result<(), VpnError> {
        if uapi::get(&self.sock).await.is_ok() {
            return Ok(());
        }
        if let Some(mut old) = self.child.take() {
            let _ = old.kill().await;
        }
        // A socket or interface left by a killed process would stop the new one.
        let _ = std::fs::remove_file(&self.sock);
        netcfg::delete_link(&self.cfg.interface).await;
        let program = self.wireguard_go.clone().ok_or(VpnError::NoWireguard)?;
        let mut child = Command::new(program)
            .arg("-f")
            .arg(&self.cfg.interface)
            .env("LOG_LEVEL", "error")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(false)
            .spawn()
            .map_err(VpnError::Spawn)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if uapi::get(&self.sock).await.is_ok() {
                tracing::info!(pid = child.id(), interface = %self.cfg.interface, "wireguard-go started");
                self.child = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(VpnError::ExitedAtStart(status));
            }
            if Instant::now() > deadline {
                let _ = child.kill().await;
                return Err(VpnError::NoUapiSocket);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The tunnel process vanished: down now, restart after the backoff.
    pub(super) async fn lost(&mut self, what: &str) {
        if self.phase.halted() {
            return;
        }
        tracing::warn!(reason = what, "wireguard-go is gone; restarting it");
        self.shared.update(|s| {
            s.last_error = Some(what.to_string());
            s.wireguard_pid = None;
        });
        self.failed(what).await;
    }
}
