//! The supervisor task: one loop that owns the tunnel. It ticks every
//! `health.interval_secs`, answers admin commands, and notices at once when its
//! `wireguard-go` child exits.
//!
//! State machine: `connecting`/`reconnecting` → `up` after `successes_to_up` good checks;
//! `up` → `degraded` on a failed check → `down` after `failures_to_down` consecutive failures
//! (so an outage is seen within `interval × failures_to_down` plus one interval); `down` →
//! `reconnecting` after an exponential backoff; after `rotate_after_failures` failed
//! attempts on one server the next server is tried. The rotation position starts at a
//! random server and is kept in the store.

mod commands;
mod process;
mod rotation;
mod uptime;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::Child;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use super::config::{KillswitchScope, VpnConfig, VpnProvider, VpnServer};
use super::error::ProbeError;
use super::health::{Checks, Sample, Step};
use super::{Request, Shared, VpnError, VpnState, killswitch, netcfg, uapi};
use crate::audit::Audit;
use crate::audit::{ClientInfo, EventKind, SecurityEvent, Severity};
use crate::crypto::Keyring;
use crate::store::Store;
use process::{has_net_admin, wait_child, which};
use uptime::Uptime;

const ROTATION_KEY: &str = "vpn_rotation";
const OVERRIDE_KEY: &str = "vpn_servers";
const PROVIDER_KEY: &str = "vpn_provider_servers";
const KEEPALIVE_SECS: u16 = 25;

/// Whether the tunnel is being run, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Health checks and reconnects run.
    Running,
    /// `provider = "nordvpn"` with no list yet (first fetch failed, nothing cached, none
    /// configured): the next fetch and how many have failed. Start-up resumes once a list
    /// arrives, from the provider or from `PUT /api/vpn/servers`.
    AwaitingList { next: Instant, failures: u32 },
    /// No private key is stored: `set-key` starts the tunnel.
    NoKey,
    /// Unavailable for another reason (a capability, a tool, the kill switch), or disabled by
    /// an admin: nothing runs until the next start.
    Halted,
}

impl Phase {
    /// No health checks, no reconnects.
    fn halted(self) -> bool {
        matches!(self, Phase::NoKey | Phase::Halted)
    }
}

fn system_client() -> ClientInfo {
    ClientInfo { ip: "local".into(), ..Default::default() }
}

pub(super) struct Supervisor {
    cfg: VpnConfig,
    store: Store,
    keyring: Arc<Keyring>,
    audit: Audit,
    shared: Arc<Shared>,
    sock: PathBuf,
    wireguard_go: Option<PathBuf>,
    child: Option<Child>,
    key: Option<Zeroizing<[u8; 32]>>,
    servers: Vec<VpnServer>,
    pos: usize,
    state: VpnState,
    phase: Phase,
    checks: Checks,
    server_failures: u32,
    total_failures: u32,
    next_attempt: Option<Instant>,
    reconnects: u64,
    uptime: Uptime,
    down_at: Option<Instant>,
    provider_fetched: Option<Instant>,
}

/// With `vpn.enabled = false`: a kill switch left by an earlier run is removed (with its
/// policy rules), since only `enabled = false` or `vpn disable` may remove it.
pub(super) async fn release_leftovers(cfg: &VpnConfig, audit: &Audit) {
    if which("nft").is_none() {
        return;
    }
    match killswitch::remove().await {
        Ok(true) => {
            // Our table was there, so the policy rules and routes are ours too.
            netcfg::remove_rules().await;
            netcfg::flush_table().await;
            tracing::warn!("vpn disabled: kill switch removed; torrent traffic is no longer confined");
            audit.record_background(
                SecurityEvent::new(EventKind::KillswitchReleased, Severity::Warning, &system_client())
                    .actor("system")
                    .target(&cfg.interface)
                    .detail("reason", "vpn.enabled is false"),
            );
        }
        Ok(false) => {}
        Err(e) => tracing::error!(error = %e, "could not remove the kill switch"),
    }
}

impl Supervisor {
    pub(super) fn new(cfg: VpnConfig, store: Store, keyring: Arc<Keyring>, audit: Audit, shared: Arc<Shared>) -> Self {
        let sock = uapi::socket_path(&cfg.interface);
        Supervisor {
            servers: cfg.servers.clone(),
            cfg,
            store,
            keyring,
            audit,
            shared,
            sock,
            wireguard_go: None,
            child: None,
            key: None,
            pos: 0,
            state: VpnState::Connecting,
            phase: Phase::Running,
            checks: Checks::default(),
            server_failures: 0,
            total_failures: 0,
            next_attempt: None,
            reconnects: 0,
            uptime: Uptime::default(),
            down_at: None,
            provider_fetched: None,
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        self.startup().await;
        let mut tick = tokio::time::interval(Duration::from_secs(self.cfg.health.interval_secs));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.tick().await,
                Some((cmd, ack)) = rx.recv() => {
                    let r = self.handle(cmd).await;
                    let _ = ack.send(r);
                }
                status = wait_child(&mut self.child) => {
                    self.child = None;
                    let what = match status {
                        Ok(s) => format!("wireguard-go exited ({s})"),
                        Err(e) => format!("wireguard-go could not be waited for: {e}"),
                    };
                    self.lost(&what).await;
                }
            }
        }
    }

    fn event(&self, kind: EventKind, severity: Severity) -> SecurityEvent {
        let server = self.servers.get(self.pos).map(|s| s.name.clone()).unwrap_or_default();
        SecurityEvent::new(kind, severity, &system_client()).actor("system").target(server)
    }

    fn set_state(&mut self, state: VpnState, reason: Option<String>) {
        if self.state != state {
            tracing::info!(
                from = self.state.as_str(),
                to = state.as_str(),
                reason = reason.as_deref().unwrap_or(""),
                "vpn state"
            );
        }
        let changed = self.state != state;
        self.state = state;
        self.shared.update(|s| {
            if changed {
                s.since = crate::clock::now();
            }
            s.state = state;
            if matches!(state, VpnState::Unavailable | VpnState::Disabled) || reason.is_some() {
                s.reason = reason;
            }
        });
        metrics::gauge!("vpn_state").set(f64::from(state.code()));
        metrics::gauge!("vpn_up").set(if state.passes() { 1.0 } else { 0.0 });
    }

    fn unavailable(&mut self, reason: String) {
        tracing::error!(reason = %reason, "vpn unavailable; routes that require the VPN stay closed");
        self.phase = Phase::Halted;
        self.set_state(VpnState::Unavailable, Some(reason));
    }

    async fn startup(&mut self) {
        metrics::counter!("vpn_reconnects_total").absolute(0);
        self.set_state(VpnState::Connecting, None);
        // The list first: it needs no privilege, and the status page shows it either way.
        self.load_servers().await;

        if !has_net_admin() {
            return self.unavailable(
                "the gate lacks CAP_NET_ADMIN (run it as the systemd unit installed by install.sh, or as root)".into(),
            );
        }
        if which("ip").is_none() {
            return self.unavailable("`ip` (iproute2) is not installed".into());
        }
        self.wireguard_go = which("wireguard-go");
        if self.wireguard_go.is_none() {
            return self.unavailable("no WireGuard: `wireguard-go` is not installed (apt install wireguard-go)".into());
        }
        if self.cfg.killswitch.enabled
            && let Err(e) = killswitch::available().await
        {
            return self.unavailable(format!("{e} (apt install nftables)"));
        }
        if self.servers.is_empty() {
            if self.cfg.provider != Some(VpnProvider::Nordvpn) {
                return self.unavailable("no VPN servers are configured".into());
            }
            // Fail closed while the list is missing. Only in the uid scope: the `all` scope
            // would also block the gate's own request for the list.
            if self.cfg.killswitch.enabled
                && self.cfg.killswitch.scope == KillswitchScope::Uid
                && let Err(e) = self.engage().await
            {
                return self.unavailable(e.to_string());
            }
            return self.await_list(0);
        }
        self.bring_up().await;
    }

    /// Start-up once there are servers: position, kill switch, key, first attempt.
    async fn bring_up(&mut self) {
        self.pos = self.rotation_position().await;
        if let Err(e) = self.engage().await {
            return self.unavailable(e.to_string());
        }
        match super::load_key(&self.store, &self.keyring) {
            Ok(Some(k)) => self.key = Some(k),
            Ok(None) => {
                self.unavailable("no private key: run `miauflix-gate vpn set-key` or PUT /api/vpn/key".into());
                self.phase = Phase::NoKey;
                return;
            }
            Err(e) => return self.unavailable(format!("the stored private key cannot be read: {e}")),
        }
        self.attempt(true).await;
    }

    /// Installs (or atomically rebuilds) the kill switch and the policy rules.
    async fn engage(&mut self) -> Result<(), VpnError> {
        if self.cfg.killswitch.enabled {
            let before = killswitch::status().await;
            let endpoints = self.endpoints().await;
            killswitch::install(&self.cfg, &endpoints).await?;
            if before.present {
                tracing::info!("kill switch already in place; adopted and rebuilt atomically");
            } else {
                tracing::warn!(scope = %format!("{:?}", self.cfg.killswitch.scope).to_lowercase(), "kill switch engaged");
                self.audit.record_background(
                    self.event(EventKind::KillswitchEngaged, Severity::Info)
                        .detail("scope", format!("{:?}", self.cfg.killswitch.scope).to_lowercase()),
                );
            }
        } else if killswitch::remove().await? {
            tracing::warn!("killswitch.enabled is false: kill switch removed");
            self.audit.record_background(
                self.event(EventKind::KillswitchReleased, Severity::Warning)
                    .detail("reason", "vpn.killswitch.enabled is false"),
            );
        }
        netcfg::install_rules(&self.cfg).await?;
        self.refresh_killswitch_view().await;
        Ok(())
    }

    async fn refresh_killswitch_view(&self) {
        let st = killswitch::status().await;
        self.shared.update(|s| {
            s.killswitch.installed = st.present;
            s.killswitch.rules = st.rules;
            s.killswitch.dropped_packets = st.dropped_packets;
        });
    }

    fn backoff(&self) -> Duration {
        self.backoff_after(self.total_failures.saturating_sub(1))
    }

    /// The reconnect backoff after `n` doublings ([`super::health::backoff`]).
    fn backoff_after(&self, n: u32) -> Duration {
        super::health::backoff(&self.cfg.reconnect, n)
    }

    /// Brings the tunnel up on the current server. `initial`: the first attempt of this
    /// run, which adopts a running `wireguard-go` that already has the right peer.
    async fn attempt(&mut self, initial: bool) {
        self.next_attempt = None;
        if !initial {
            self.reconnects += 1;
            metrics::counter!("vpn_reconnects_total").increment(1);
            let n = self.reconnects;
            self.shared.update(|s| s.reconnects = n);
            self.set_state(VpnState::Reconnecting, None);
            self.audit.record_background(
                self.event(EventKind::VpnReconnecting, Severity::Info)
                    .detail("attempt", self.total_failures.to_string()),
            );
        }
        self.checks.reset();
        if let Err(e) = self.apply(initial).await {
            tracing::warn!(error = %e, "vpn connect attempt failed");
            let reason = e.to_string();
            self.shared.update(|s| s.last_error = Some(reason.clone()));
            self.failed(&reason).await;
        }
    }

    /// A check sequence or an attempt failed: down, maybe rotate, schedule the next attempt.
    async fn failed(&mut self, reason: &str) {
        let was = self.state;
        self.server_failures += 1;
        self.total_failures += 1;
        self.set_state(VpnState::Down, Some(reason.to_string()));
        if was != VpnState::Reconnecting && was != VpnState::Down {
            self.down_at = Some(Instant::now());
            tracing::warn!(reason, "vpn down; routes that require the VPN are closed");
            self.audit.record_background(self.event(EventKind::VpnDown, Severity::Warning).detail("reason", reason));
        }
        if self.servers.len() > 1 && self.server_failures >= self.cfg.reconnect.rotate_after_failures {
            self.rotate("failures").await;
        }
        self.next_attempt = Some(Instant::now() + self.backoff());
    }

    async fn probe(&self) -> Result<(), ProbeError> {
        let Some(addr) = self.cfg.health.probe_addr() else { return Ok(()) };
        let sock = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
            .map_err(ProbeError::Socket)?;
        sock.bind_device(Some(self.cfg.interface.as_bytes())).map_err(ProbeError::Socket)?;
        let limit = Duration::from_secs(self.cfg.health.interval_secs.clamp(1, 5));
        match tokio::time::timeout(limit, sock.connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            // A refusal came back through the tunnel: the tunnel works.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            Ok(Err(source)) => Err(ProbeError::Connect { addr, source }),
            Err(_) => Err(ProbeError::Timeout { addr, secs: limit.as_secs() }),
        }
    }

    async fn tick(&mut self) {
        if self.phase.halted() {
            return;
        }
        if let Phase::AwaitingList { next, failures } = self.phase {
            if Instant::now() >= next {
                self.refresh_provider().await;
                if self.servers.is_empty() {
                    self.await_list(failures);
                } else {
                    self.list_arrived().await;
                }
            }
            return;
        }
        let ratio = self.uptime.add(self.state.passes());
        metrics::gauge!("vpn_uptime_ratio").set(ratio);
        self.shared.update(|s| s.uptime_ratio_24h = ratio);
        if self.cfg.provider == Some(VpnProvider::Nordvpn)
            && self.provider_fetched.is_none_or(|t| t.elapsed() >= Duration::from_secs(self.cfg.nordvpn.refresh_secs))
        {
            let before = self.servers.clone();
            self.refresh_provider().await;
            if before != self.servers {
                let _ = self.engage().await;
            }
        }
        if let Some(at) = self.next_attempt {
            if Instant::now() >= at {
                self.attempt(false).await;
            }
            return;
        }
        // The verdict is the status page's reason text.
        let probe = self.probe().await.map_err(|e| e.to_string());
        let dev = match uapi::get(&self.sock).await {
            Ok(d) => d,
            Err(e) => return self.lost(&format!("wireguard-go is not answering ({e})")).await,
        };
        let health = self.judge(&dev, probe);
        self.refresh_killswitch_view().await;
        if let Err(e) = &health {
            tracing::debug!(error = %e, fails = self.checks.failures() + 1, "vpn health check failed");
            self.shared.update(|s| s.last_error = Some(e.clone()));
        }
        match self.checks.step(self.state, health, &self.cfg.health) {
            Step::Down(e) => self.failed(&e).await,
            Step::Degraded => self.set_state(VpnState::Degraded, None),
            Step::Connected => self.became_up(),
            Step::Recovered => self.set_state(VpnState::Up, None),
            Step::Stay => {}
        }
    }

    /// Passive checks on the device counters plus the probe's verdict (decided by
    /// [`Checks::judge`]); publishes what it read.
    fn judge(&mut self, dev: &uapi::Device, probe: Result<(), String>) -> Result<(), String> {
        let sample = dev.peers.first().map(|peer| {
            let now = crate::clock::now().max(0) as u64;
            Sample {
                rx_bytes: peer.rx_bytes,
                tx_bytes: peer.tx_bytes,
                handshake_age: peer.last_handshake.map(|t| now.saturating_sub(t)),
            }
        });
        if let Some(s) = sample {
            metrics::gauge!("vpn_rx_bytes").set(s.rx_bytes as f64);
            metrics::gauge!("vpn_tx_bytes").set(s.tx_bytes as f64);
            if let Some(a) = s.handshake_age {
                metrics::gauge!("vpn_handshake_age_seconds").set(a as f64);
            }
            self.shared.update(|st| {
                st.handshake_age_secs = s.handshake_age;
                st.rx_bytes = s.rx_bytes;
                st.tx_bytes = s.tx_bytes;
            });
        }
        self.checks.judge(sample, probe, self.cfg.health.handshake_max_age_secs)
    }

    fn became_up(&mut self) {
        let recovered = self.down_at.take().map(|t| t.elapsed());
        self.total_failures = 0;
        self.server_failures = 0;
        self.set_state(VpnState::Up, None);
        let server = self.servers[self.pos].name.clone();
        match recovered {
            Some(d) => tracing::info!(server = %server, recovered_after_ms = d.as_millis() as u64, "vpn up"),
            None => tracing::info!(server = %server, "vpn up"),
        }
        let mut ev = self.event(EventKind::VpnUp, Severity::Info);
        if let Some(d) = recovered {
            ev = ev.detail("down_for_ms", d.as_millis().to_string());
        }
        self.audit.record_background(ev);
    }
}
