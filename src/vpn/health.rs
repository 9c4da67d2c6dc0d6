//! The tunnel's health, as a pure state machine: one check's verdict from the device's
//! counters, its latest handshake and the probe, and what the state becomes after it —
//! `connecting`/`reconnecting` → `up` after `successes_to_up` good checks in a row;
//! `up` → `degraded` on a failed check → `down` after `failures_to_down` in a row. The
//! supervisor does the I/O (UAPI, the probe, events); this decides, and also how long the
//! supervisor waits before the next attempt ([`backoff`]).

use std::time::Duration;

use super::VpnState;
use super::config::{VpnHealthConfig, VpnReconnectConfig};

/// The wait before a reconnect after `doublings` doublings: `backoff_base_secs × 2ⁿ`, at most
/// `backoff_max_secs` (the exponent stops at 20 and the product saturates, so it never wraps).
/// No jitter: one gate reconnects to one server.
pub(super) fn backoff(r: &VpnReconnectConfig, doublings: u32) -> Duration {
    Duration::from_secs(r.backoff_base_secs.saturating_mul(1 << doublings.min(20)).min(r.backoff_max_secs))
}

/// Checks in a row that saw bytes sent but none received before the link counts as stalled.
pub(super) const STALL_CHECKS: u32 = 3;

/// What one check read off the device (its first peer).
#[derive(Debug, Clone, Copy)]
pub(super) struct Sample {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Seconds since the latest handshake; `None` before the first.
    pub handshake_age: Option<u64>,
}

/// What the state becomes after a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    /// Nothing changes.
    Stay,
    /// Enough failures in a row: down, for this reason.
    Down(String),
    /// A failure while up, fewer than `failures_to_down` so far.
    Degraded,
    /// Enough good checks while degraded: up again.
    Recovered,
    /// Enough good checks while connecting or reconnecting: up.
    Connected,
}

/// The counts that span checks; reset by every connect attempt.
#[derive(Debug, Default)]
pub(super) struct Checks {
    fails: u32,
    succ: u32,
    stall: u32,
    counters: Option<(u64, u64)>,
}

impl Checks {
    /// A new attempt starts counting afresh.
    pub(super) fn reset(&mut self) {
        *self = Checks::default();
    }

    /// Failed checks in a row so far.
    pub(super) fn failures(&self) -> u32 {
        self.fails
    }

    /// One check's verdict: the probe's, then the handshake's age, then the stall count
    /// (bytes sent and none received for [`STALL_CHECKS`] checks). `sample` is `None` when
    /// the device has no peer.
    pub(super) fn judge(
        &mut self,
        sample: Option<Sample>,
        probe: Result<(), String>,
        handshake_max_age: u64,
    ) -> Result<(), String> {
        let Some(s) = sample else { return Err("the device has no peer".into()) };
        if let Some((rx0, tx0)) = self.counters {
            self.stall = if s.tx_bytes > tx0 && s.rx_bytes == rx0 { self.stall + 1 } else { 0 };
        }
        self.counters = Some((s.rx_bytes, s.tx_bytes));
        probe?;
        match s.handshake_age {
            None => return Err("no handshake with the server yet".into()),
            Some(a) if a > handshake_max_age => return Err(format!("latest handshake {a} s ago")),
            _ => {}
        }
        if self.stall >= STALL_CHECKS {
            return Err(format!("sent but received nothing for {STALL_CHECKS} checks"));
        }
        Ok(())
    }

    /// Counts a verdict and says what `state` becomes.
    pub(super) fn step(&mut self, state: VpnState, verdict: Result<(), String>, cfg: &VpnHealthConfig) -> Step {
        match &verdict {
            Err(_) => {
                self.fails += 1;
                self.succ = 0;
            }
            Ok(()) => {
                self.succ += 1;
                self.fails = 0;
            }
        }
        let trying = matches!(state, VpnState::Connecting | VpnState::Reconnecting);
        let running = matches!(state, VpnState::Up | VpnState::Degraded);
        match verdict {
            // Enough failures in a row (the latest among them): down, whatever we were.
            Err(e) if (trying || running) && self.fails >= cfg.failures_to_down => Step::Down(e),
            Err(_) if running => Step::Degraded,
            Ok(()) if self.succ >= cfg.successes_to_up && state != VpnState::Up && trying => Step::Connected,
            Ok(()) if self.succ >= cfg.successes_to_up && state != VpnState::Up && running => Step::Recovered,
            _ => Step::Stay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VpnHealthConfig {
        VpnHealthConfig { failures_to_down: 3, successes_to_up: 2, ..Default::default() }
    }

    fn good(rx: u64, tx: u64) -> Option<Sample> {
        Some(Sample { rx_bytes: rx, tx_bytes: tx, handshake_age: Some(10) })
    }

    #[test]
    fn the_backoff_starts_at_the_base_doubles_and_stops_at_the_maximum() {
        let r = VpnReconnectConfig { backoff_base_secs: 2, backoff_max_secs: 300, ..Default::default() };
        let secs: Vec<u64> = (0..10).map(|n| backoff(&r, n).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        // A long outage neither overflows nor wraps to a short wait.
        for n in [20, 21, 63, 64, u32::MAX] {
            assert_eq!(backoff(&r, n), Duration::from_secs(300), "after {n} doublings");
        }
        // The largest base the config admits still saturates at the maximum.
        let big = VpnReconnectConfig { backoff_base_secs: 86_400, backoff_max_secs: 86_400, ..Default::default() };
        assert_eq!(backoff(&big, 0), Duration::from_secs(86_400));
        assert_eq!(backoff(&big, u32::MAX), Duration::from_secs(86_400));
        let huge =
            VpnReconnectConfig { backoff_base_secs: u64::MAX / 2, backoff_max_secs: u64::MAX, ..Default::default() };
        assert_eq!(backoff(&huge, 30), Duration::from_secs(u64::MAX), "saturates instead of wrapping");
    }

    #[test]
    fn up_after_successes_in_a_row_and_down_after_failures_in_a_row() {
        let (mut c, cfg) = (Checks::default(), cfg());
        assert_eq!(c.step(VpnState::Connecting, Ok(()), &cfg), Step::Stay);
        assert_eq!(c.step(VpnState::Connecting, Err("x".into()), &cfg), Step::Stay, "a failure resets the count");
        assert_eq!(c.step(VpnState::Connecting, Ok(()), &cfg), Step::Stay);
        assert_eq!(c.step(VpnState::Connecting, Ok(()), &cfg), Step::Connected);
        assert_eq!(c.step(VpnState::Up, Err("a".into()), &cfg), Step::Degraded);
        assert_eq!(c.step(VpnState::Degraded, Err("b".into()), &cfg), Step::Degraded);
        assert_eq!(c.step(VpnState::Degraded, Err("c".into()), &cfg), Step::Down("c".into()), "the latest reason");
        assert_eq!(c.failures(), 3);
    }

    #[test]
    fn degraded_recovers_after_successes_and_down_waits_for_a_new_attempt() {
        let (mut c, cfg) = (Checks::default(), cfg());
        assert_eq!(c.step(VpnState::Up, Err("a".into()), &cfg), Step::Degraded);
        assert_eq!(c.step(VpnState::Degraded, Ok(()), &cfg), Step::Stay);
        assert_eq!(c.step(VpnState::Degraded, Ok(()), &cfg), Step::Recovered);
        // Down and unavailable are left by the supervisor's next attempt, never by a check.
        for state in [VpnState::Down, VpnState::Unavailable, VpnState::Disabled] {
            let mut c = Checks::default();
            for _ in 0..5 {
                assert_eq!(c.step(state, Ok(()), &cfg), Step::Stay);
                assert_eq!(c.step(state, Err("x".into()), &cfg), Step::Stay);
            }
        }
    }

    #[test]
    fn the_verdict_reads_probe_handshake_and_stall_in_that_order() {
        let mut c = Checks::default();
        assert_eq!(c.judge(None, Ok(()), 180), Err("the device has no peer".into()));
        assert_eq!(c.judge(good(0, 0), Err("probe: refused".into()), 180), Err("probe: refused".into()));
        let none = Some(Sample { rx_bytes: 0, tx_bytes: 0, handshake_age: None });
        assert_eq!(c.judge(none, Ok(()), 180), Err("no handshake with the server yet".into()));
        let old = Some(Sample { rx_bytes: 0, tx_bytes: 0, handshake_age: Some(181) });
        assert_eq!(c.judge(old, Ok(()), 180), Err("latest handshake 181 s ago".into()));
        assert_eq!(c.judge(good(0, 0), Ok(()), 180), Ok(()));
    }

    #[test]
    fn sending_without_receiving_for_three_checks_is_a_stall() {
        let mut c = Checks::default();
        assert_eq!(c.judge(good(100, 100), Ok(()), 180), Ok(()));
        assert_eq!(c.judge(good(100, 200), Ok(()), 180), Ok(()));
        assert_eq!(c.judge(good(100, 300), Ok(()), 180), Ok(()));
        assert_eq!(c.judge(good(100, 400), Ok(()), 180), Err("sent but received nothing for 3 checks".into()));
        // A byte received ends the stall; an attempt's reset forgets the counters.
        assert_eq!(c.judge(good(101, 500), Ok(()), 180), Ok(()));
        c.reset();
        assert_eq!(c.judge(good(0, 900), Ok(()), 180), Ok(()));
    }
}
