//! Account lockout, counted per submitted email whatever the IP (and whether or not the
//! account exists, so a lock reveals nothing): after `max_failures` in `window_secs` the
//! email is locked for `base_lock_secs`, doubling with each further lock up to `max_lock_secs`.
//! While locked, attempts never reach the password check.
//!
//! An attempt reserves its place in the budget before the password is hashed
//! ([`Lockout::reserve`]), so failures counted plus attempts in flight never exceed
//! `max_failures`: parallel guesses from many addresses cannot outrun the count. A spent
//! budget refuses the attempt before the hash, whatever the password. A success gives back
//! only its own place: failures decay with the window, so at most `max_failures` wrong
//! passwords per window are ever checked, however often the owner signs in meanwhile.

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
    /// Checks what types alone cannot; keys are relative to `[lockout]`.
    pub fn validate(&self) -> Result<(), crate::validate::ConfigError> {
        use crate::validate::bad;
        if !(1..=100).contains(&self.max_failures) {
            return bad("max_failures", "must be between 1 and 100");
        }
        if !(60..=86_400).contains(&self.window_secs) {
            return bad("window_secs", "must be between 60 and 86400");
        }
        if !(1..=86_400).contains(&self.base_lock_secs)
            || self.max_lock_secs < self.base_lock_secs
            || self.max_lock_secs > 7 * 86_400
        {
            return bad("base_lock_secs/max_lock_secs", "need 1 <= base <= max <= 604800");
        }
        Ok(())
    }
}

#[derive(Debug, Default, Clone)]
struct Entry {
    failures: u32,
    /// Attempts reserved and not yet resolved (their password is being checked).
    in_flight: u32,
    window_start: i64,
    /// Locks so far (the next one lasts base × 2^locks).
    locks: u32,
    locked_until: i64,
    last_seen: i64,
}

/// Most emails tracked; beyond this the stalest entries go (a spray of random emails
/// cannot exhaust memory). Entries with attempts in flight are never dropped.
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

/// One reserved attempt. Resolve it with [`Attempt::failed`] or [`Attempt::succeeded`]; dropped
/// unresolved before [`Attempt::checking`] (an error before the hash), it gives its place back
/// uncounted; dropped once checking (a client that hung up mid-hash: the hash still runs to
/// its end), it counts as a failure, so cancelling cannot buy password checks beyond the budget.
pub struct Attempt<'a> {
    lockout: &'a Lockout,
    key: String,
    resolved: bool,
    checking: bool,
}

impl Attempt<'_> {
    /// The password check is about to start: from now on a drop counts as a failure.
    pub fn checking(&mut self) {
        self.checking = true;
    }

    /// The password was wrong (or the account unusable): counts a failure, which may lock.
    pub fn failed(mut self, now: i64) -> FailureOutcome {
        self.resolved = true;
        self.lockout.resolve(&self.key, now, false)
    }

    /// The password was right: gives the place back. Failures counted stay (they decay with
    /// the window), and so does a lock.
    pub fn succeeded(mut self, now: i64) {
        self.resolved = true;
        self.lockout.resolve(&self.key, now, true);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.resolved && self.checking {
            let now = crate::clock::now();
            if let FailureOutcome::Locked(secs) = self.lockout.resolve(&self.key, now, false) {
                tracing::warn!(target: "security", seconds = secs, "an email was locked by attempts whose clients hung up");
            }
            return;
        }
        if !self.resolved
            && let Ok(mut entries) = self.lockout.entries.lock()
            && let Some(e) = entries.get_mut(&self.key)
        {
            e.in_flight = e.in_flight.saturating_sub(1);
        }
    }
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

    /// Reserves one attempt for `email` at `now`, before its password is checked. `Err(secs)`
    /// when the email is locked, or when failures counted plus attempts in flight already
    /// fill `max_failures` (then `secs` is 1: the budget frees as those attempts resolve).
    pub fn reserve(&self, email: &str, now: i64) -> Result<Attempt<'_>, i64> {
        let Ok(mut entries) = self.entries.lock() else { return Err(1) };
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(email) {
            let cutoff = now - self.cfg.window_secs;
            entries.retain(|_, e| e.in_flight > 0 || e.locked_until > now || e.last_seen > cutoff);
            if entries.len() >= MAX_ENTRIES
                && let Some(oldest) = entries
                    .iter()
                    .filter(|(_, e)| e.in_flight == 0)
                    .min_by_key(|(_, e)| e.last_seen)
                    .map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
        }
        let e = entries.entry(email.to_string()).or_default();
        e.last_seen = now;
        if e.locked_until > now {
            return Err(e.locked_until - now);
        }
        if now - e.window_start >= self.cfg.window_secs {
            e.window_start = now;
            e.failures = 0;
        }
        if e.failures.saturating_add(e.in_flight) >= self.cfg.max_failures {
            return Err(1);
        }
        e.in_flight += 1;
        Ok(Attempt { lockout: self, key: email.to_string(), resolved: false, checking: false })
    }

    fn resolve(&self, email: &str, now: i64, success: bool) -> FailureOutcome {
        let Ok(mut entries) = self.entries.lock() else { return FailureOutcome::Counted };
        let e = entries.entry(email.to_string()).or_default();
        e.in_flight = e.in_flight.saturating_sub(1);
        e.last_seen = now;
        if success {
            if e.in_flight == 0 && e.failures == 0 && e.locked_until <= now && e.locks == 0 {
                entries.remove(email);
            }
            return FailureOutcome::Counted;
        }
        if now - e.window_start >= self.cfg.window_secs {
            e.window_start = now;
            e.failures = 0;
        }
        e.failures += 1;
        if e.failures >= self.cfg.max_failures && e.locked_until <= now {
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

    /// Lifts a lock (admin action). Returns whether there was one. Attempts in flight keep
    /// their places.
    pub fn unlock(&self, email: &str, now: i64) -> bool {
        let Ok(mut entries) = self.entries.lock() else { return false };
        let Some(e) = entries.get_mut(email) else { return false };
        let was = e.locked_until > now;
        if e.in_flight == 0 {
            entries.remove(email);
        } else {
            *e = Entry { in_flight: e.in_flight, last_seen: now, window_start: now, ..Entry::default() };
        }
        was
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lockout() -> Lockout {
        Lockout::new(LockoutConfig::default())
    }

    #[test]
    fn attempts_in_flight_fill_the_budget() {
        let l = lockout();
        let held: Vec<_> = (0..5).map(|_| l.reserve("a@x", 100).unwrap()).collect();
        assert_eq!(l.reserve("a@x", 100).err(), Some(1), "a sixth attempt waits for none of the five");
        assert!(l.reserve("b@x", 100).is_ok(), "other emails have their own budget");
        let mut outcomes: Vec<_> = held.into_iter().map(|a| a.failed(101)).collect();
        assert_eq!(outcomes.pop(), Some(FailureOutcome::Locked(60)));
        assert_eq!(l.reserve("a@x", 101).err(), Some(60));
    }

    #[test]
    fn an_attempt_dropped_mid_check_counts_as_a_failure() {
        let l = lockout();
        for _ in 0..5 {
            let mut a = l.reserve("a@x", crate::clock::now()).unwrap();
            a.checking();
            drop(a);
        }
        assert!(l.locked_for("a@x", crate::clock::now()).is_some(), "five hung-up checks lock like five failures");
    }

    #[test]
    fn a_success_holds_its_place_and_gives_back_only_that_and_a_dropped_attempt_is_free() {
        let l = lockout();
        for _ in 0..3 {
            l.reserve("a@x", 100).unwrap().failed(100);
        }
        let right = l.reserve("a@x", 100).unwrap();
        drop(l.reserve("a@x", 100).unwrap());
        let wrong = l.reserve("a@x", 100).unwrap();
        assert!(l.reserve("a@x", 100).is_err(), "three failures and two in flight fill the budget");
        assert_eq!(wrong.failed(100), FailureOutcome::Counted);
        right.succeeded(100);
        assert_eq!(l.locked_for("a@x", 100), None);
        // The success gave back its place only: four failures stand, the fifth locks.
        assert_eq!(l.reserve("a@x", 100).unwrap().failed(100), FailureOutcome::Locked(60));
        assert!(l.reserve("a@x", 100).is_err(), "the right password is refused while locked");
        // In the next window the count starts again.
        let l = lockout();
        for _ in 0..4 {
            l.reserve("b@x", 100).unwrap().failed(100);
        }
        l.reserve("b@x", 100).unwrap().succeeded(100);
        assert_eq!(l.reserve("b@x", 1000).unwrap().failed(1000), FailureOutcome::Counted);
    }

    #[test]
    fn the_window_resets_the_count_and_locks_double() {
        let l = lockout();
        for _ in 0..4 {
            l.reserve("a@x", 0).unwrap().failed(0);
        }
        assert_eq!(l.reserve("a@x", 900).unwrap().failed(900), FailureOutcome::Counted);
        for _ in 0..4 {
            l.reserve("a@x", 900).unwrap().failed(900);
        }
        assert!(l.locked_for("a@x", 900).is_some());
        for _ in 0..5 {
            if let Ok(a) = l.reserve("a@x", 1000) {
                a.failed(1000);
            }
        }
        assert_eq!(l.locked_for("a@x", 1000), Some(120));
        assert!(l.unlock("a@x", 1000));
        assert!(l.reserve("a@x", 1000).is_ok());
    }
}
