//! Account lockout, counted per submitted email whatever the IP (and whether or not the
//! account exists, so a lock reveals nothing): after `max_failures` in `window_secs` the
//! email is locked for `base_lock_secs`, doubling with each further lock up to `max_lock_secs`.
//! While locked, attempts never reach the password check.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// `[lockout]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LockoutConfig {
    pub max_failures: u32,
    pub window_secs: i64,
    pub base_lock_secs: i64,
    pub max_lock_secs: i64,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        LockoutConfig { max_failures: 5, window_secs: 900, base_lock_secs: 60, max_lock_secs: 3600 }
    }
}

impl LockoutConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=100).contains(&self.max_failures) {
            return Err("lockout.max_failures: must be between 1 and 100".into());
        }
        if !(60..=86_400).contains(&self.window_secs) {
            return Err("lockout.window_secs: must be between 60 and 86400".into());
        }
        if !(1..=86_400).contains(&self.base_lock_secs)
            || self.max_lock_secs < self.base_lock_secs
            || self.max_lock_secs > 7 * 86_400
        {
            return Err("lockout.base_lock_secs/max_lock_secs: need 1 <= base <= max <= 604800".into());
        }
        Ok(())
    }
}

#[derive(Debug, Default, Clone)]
struct Entry {
    failures: u32,
    window_start: i64,
    /// Locks so far (the next one lasts base × 2^locks).
    locks: u32,
    locked_until: i64,
    last_seen: i64,
}

/// Most emails tracked; beyond this the stalest entries go (a spray of random emails
/// cannot exhaust memory).
const MAX_ENTRIES: usize = 100_000;

/// The lockout table, in memory.
pub struct Lockout {
    cfg: LockoutConfig,
    entries: Mutex<HashMap<String, Entry>>,
}

/// What a failure did.
#[derive(Debug, PartialEq, Eq)]
pub enum FailureOutcome {
    Counted,
    /// The email is now locked for this many seconds.
    Locked(i64),
}

impl Lockout {
    pub fn new(cfg: LockoutConfig) -> Lockout {
        Lockout { cfg, entries: Mutex::new(HashMap::new()) }
    }

    /// Seconds left on a lock, if `email` is locked at `now`.
    pub fn locked_for(&self, email: &str, now: i64) -> Option<i64> {
        let entries = self.entries.lock().ok()?;
        let e = entries.get(email)?;
        (e.locked_until > now).then(|| e.locked_until - now)
    }

    /// Records a failed attempt.
    pub fn record_failure(&self, email: &str, now: i64) -> FailureOutcome {
        let Ok(mut entries) = self.entries.lock() else { return FailureOutcome::Counted };
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(email) {
            let cutoff = now - self.cfg.window_secs;
            entries.retain(|_, e| e.locked_until > now || e.last_seen > cutoff);
            if entries.len() >= MAX_ENTRIES
                && let Some(oldest) = entries.iter().min_by_key(|(_, e)| e.last_seen).map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
        }
        let e = entries.entry(email.to_string()).or_default();
        e.last_seen = now;
        if now - e.window_start >= self.cfg.window_secs {
            e.window_start = now;
            e.failures = 0;
        }
        e.failures += 1;
        if e.failures >= self.cfg.max_failures {
            let factor = 1i64.checked_shl(e.locks.min(20)).unwrap_or(i64::MAX);
            let secs = self.cfg.base_lock_secs.saturating_mul(factor).min(self.cfg.max_lock_secs);
            e.locks += 1;
            e.locked_until = now + secs;
            e.failures = 0;
            e.window_start = now;
            return FailureOutcome::Locked(secs);
        }
        FailureOutcome::Counted
    }

    /// A successful login clears the failures (the lock history decays with the window).
    pub fn record_success(&self, email: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(email);
        }
    }

    /// Lifts a lock (admin action). Returns whether there was one.
    pub fn unlock(&self, email: &str, now: i64) -> bool {
        let Ok(mut entries) = self.entries.lock() else { return false };
        let was = entries.get(email).is_some_and(|e| e.locked_until > now);
        entries.remove(email);
        was
    }
}
