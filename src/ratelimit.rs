//! GCRA rate limits (governor) per class, keyed by client IP or user. Idle keys are evicted
//! in the background so memory stays bounded however many distinct keys arrive; denials are
//! reported once per key per window so a flood cannot flood the log ([`RefusalTally`], also
//! used for the other refusals a client can repeat for free: CSRF, a locked account).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};

/// Which limit a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateClass {
    /// Login, token, setup, refresh.
    Auth,
    /// Everything else under `/api`.
    Api,
    /// Media streams.
    Stream,
    /// Every request, per client IP.
    Global,
}

impl RateClass {
    pub fn as_str(self) -> &'static str {
        match self {
            RateClass::Auth => "auth",
            RateClass::Api => "api",
            RateClass::Stream => "stream",
            RateClass::Global => "global",
        }
    }
}

/// One quota: a sustained rate per minute and a burst.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    pub per_minute: u32,
    pub burst: u32,
}

/// `[rate_limits]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub auth: QuotaConfig,
    pub api: QuotaConfig,
    pub stream: QuotaConfig,
    pub global: QuotaConfig,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            auth: QuotaConfig { per_minute: 10, burst: 5 },
            api: QuotaConfig { per_minute: 600, burst: 120 },
            stream: QuotaConfig { per_minute: 1200, burst: 300 },
            global: QuotaConfig { per_minute: 3000, burst: 600 },
        }
    }
}

impl RateLimitConfig {
    /// The quota of a class.
    pub fn quota(&self, class: RateClass) -> QuotaConfig {
        match class {
            RateClass::Auth => self.auth,
            RateClass::Api => self.api,
            RateClass::Stream => self.stream,
            RateClass::Global => self.global,
        }
    }

    /// Checks every quota; keys are relative to `[rate_limits]`.
    pub fn validate(&self) -> Result<(), crate::validate::ConfigError> {
        for class in [RateClass::Auth, RateClass::Api, RateClass::Stream, RateClass::Global] {
            let q = self.quota(class);
            if !(1..=100_000_000).contains(&q.per_minute) || !(1..=10_000_000).contains(&q.burst) {
                return crate::validate::bad(class.as_str(), "per_minute must be 1..=100000000 and burst 1..=10000000");
            }
        }
        Ok(())
    }
}

/// Keys are kept as a keyed 64-bit hash of the client address or user (SipHash with a key
/// drawn at start, so nobody can aim collisions): no allocation per check, and 8 bytes a key
/// instead of a string when a spray of addresses fills the maps.
type Limiter = RateLimiter<u64, DefaultKeyedStateStore<u64>, DefaultClock, StateInformationMiddleware>;

/// What a client address counts as: an IPv4 address (IPv4-mapped IPv6 included) or the /64
/// of an IPv6 one.
#[derive(Clone, Copy, Hash, PartialEq, Eq, Debug)]
pub(crate) enum AddrKey {
    V4(std::net::Ipv4Addr),
    V6Net([u16; 4]),
}

impl AddrKey {
    pub(crate) fn of(ip: std::net::IpAddr) -> AddrKey {
        match ip {
            std::net::IpAddr::V4(v4) => AddrKey::V4(v4),
            std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddrKey::V4(v4),
                None => {
                    let s = v6.segments();
                    AddrKey::V6Net([s[0], s[1], s[2], s[3]])
                }
            },
        }
    }
}

impl std::fmt::Display for AddrKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddrKey::V4(v4) => v4.fmt(f),
            AddrKey::V6Net([a, b, c, d]) => write!(f, "{}/64", std::net::Ipv6Addr::new(*a, *b, *c, *d, 0, 0, 0, 0)),
        }
    }
}

/// Places held at once per client address (connections, WebSocket tunnels), each address
/// under one cap; an address back at 0 is forgotten, so the map holds only live addresses.
pub(crate) struct AddrCounts {
    counts: dashmap::DashMap<AddrKey, usize>,
    max: usize,
}

impl AddrCounts {
    pub(crate) fn new(max: usize) -> AddrCounts {
        AddrCounts { counts: dashmap::DashMap::new(), max }
    }

    /// Takes a place for `key`; `false` when it holds `max` already.
    pub(crate) fn take(&self, key: AddrKey) -> bool {
        match self.counts.entry(key) {
            dashmap::mapref::entry::Entry::Occupied(e) if *e.get() >= self.max => false,
            dashmap::mapref::entry::Entry::Occupied(mut e) => {
                *e.get_mut() += 1;
                true
            }
            dashmap::mapref::entry::Entry::Vacant(e) => {
                e.insert(1);
                true
            }
        }
    }

    /// Gives back a place `take` gave.
    pub(crate) fn give_back(&self, key: AddrKey) {
        self.counts.remove_if_mut(&key, |_, n| {
            *n -= 1;
            *n == 0
        });
    }

    /// Addresses holding a place.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.counts.len()
    }

    /// The places `key` holds, if any.
    #[cfg(test)]
    pub(crate) fn get(&self, key: &AddrKey) -> Option<usize> {
        self.counts.get(key).map(|n| *n)
    }
}

/// A request that may pass, with what is left.
#[derive(Debug, Clone)]
pub struct Allowed {
    pub limit: u32,
    pub remaining: u32,
    pub window_secs: u64,
}

/// A request over its limit.
#[derive(Debug, Clone)]
pub struct Denied {
    pub class: RateClass,
    pub limit: u32,
    pub window_secs: u64,
    pub retry_after: Duration,
    /// `Some(n)` for the first denial of this key in this window (record it, with the `n`
    /// denials of its previous window that were counted, not recorded); `None` afterwards.
    pub first_in_window: Option<u64>,
}

/// Every class's limiter.
pub struct RateLimits {
    cfg: RateLimitConfig,
    auth: Limiter,
    api: Limiter,
    stream: Limiter,
    global: Limiter,
    clock: DefaultClock,
    hasher: std::hash::RandomState,
    /// Rate-limit denials and the edge's other free refusals (CSRF), once per key per window.
    refusals: RefusalTally,
}

fn limiter(q: QuotaConfig) -> Limiter {
    let per_minute = NonZeroU32::new(q.per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(q.burst.max(1)).unwrap_or(NonZeroU32::MIN);
    RateLimiter::dashmap(Quota::per_minute(per_minute).allow_burst(burst))
        .with_middleware::<StateInformationMiddleware>()
}

/// How long a denial report stays quiet for the same key.
const REPORT_WINDOW: Duration = Duration::from_secs(60);

impl RateLimits {
    pub fn new(cfg: &RateLimitConfig) -> RateLimits {
        RateLimits {
            cfg: cfg.clone(),
            auth: limiter(cfg.auth),
            api: limiter(cfg.api),
            stream: limiter(cfg.stream),
            global: limiter(cfg.global),
            clock: DefaultClock::default(),
            hasher: std::hash::RandomState::new(),
            refusals: RefusalTally::new(),
        }
    }

    fn limiter(&self, class: RateClass) -> &Limiter {
        match class {
            RateClass::Auth => &self.auth,
            RateClass::Api => &self.api,
            RateClass::Stream => &self.stream,
            RateClass::Global => &self.global,
        }
    }

    /// Counts one request of `key` (a client address) against `class`. An IPv6 address counts
    /// for its /64: one home or customer network gets a whole /64, so stepping through
    /// addresses in it gains nothing. An IPv4-mapped IPv6 address counts as the IPv4 one.
    pub fn check(&self, class: RateClass, key: &str) -> Result<Allowed, Denied> {
        self.check_hashed(class, self.address_key(key))
    }

    /// The keyed hash of a client address (by [`AddrKey`]), or of `key` as it is when it is
    /// not an address.
    fn address_key(&self, key: &str) -> u64 {
        match key.parse::<std::net::IpAddr>() {
            Ok(ip) => std::hash::BuildHasher::hash_one(&self.hasher, AddrKey::of(ip)),
            Err(_) => std::hash::BuildHasher::hash_one(&self.hasher, key),
        }
    }

    /// Counts one request of a signed-in user against `class`, whatever address they use.
    pub fn check_user(&self, class: RateClass, user_id: &str) -> Result<Allowed, Denied> {
        let hashed = std::hash::BuildHasher::hash_one(&self.hasher, ("user", user_id));
        self.check_hashed(class, hashed)
    }

    fn check_hashed(&self, class: RateClass, hashed: u64) -> Result<Allowed, Denied> {
        let q = self.cfg.quota(class);
        match self.limiter(class).check_key(&hashed) {
            Ok(snapshot) => {
                Ok(Allowed { limit: q.per_minute, remaining: snapshot.remaining_burst_capacity(), window_secs: 60 })
            }
            Err(not_until) => {
                let retry_after = not_until.wait_time_from(self.clock.now());
                let first_in_window = self.refusals.note(class.as_str(), &hashed, std::time::Instant::now());
                Err(Denied { class, limit: q.per_minute, window_secs: 60, retry_after, first_in_window })
            }
        }
    }

    /// Notes a refusal other than a rate limit (e.g. `csrf`) of the client address `key`;
    /// see [`RefusalTally::note`].
    pub fn note_refusal(&self, kind: &'static str, key: &str) -> Option<u64> {
        self.refusals.note(kind, &self.address_key(key), std::time::Instant::now())
    }

    /// Drops keys whose state is back to fresh, and stale denial reports.
    pub fn evict_idle(&self) {
        for l in [&self.auth, &self.api, &self.stream, &self.global] {
            l.retain_recent();
            l.shrink_to_fit();
        }
        self.refusals.evict(std::time::Instant::now());
    }

    /// Keys held across all classes.
    pub fn len(&self) -> usize {
        [&self.auth, &self.api, &self.stream, &self.global].iter().map(|l| l.len()).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One key's refusals in its current window.
struct Tally {
    window_start: std::time::Instant,
    /// Refusals in this window after the recorded one.
    counted: u64,
}

/// Most keys tallied; past this, refusals of new keys are counted in a metric only.
const MAX_TALLIED: usize = 100_000;

/// Refusals that cost the gate nothing to repeat (rate limited, CSRF, a locked account),
/// aggregated per (kind, key) per [`REPORT_WINDOW`]: the first of a window is recorded, the
/// rest only counted — in `refusals_suppressed_total{kind}` at once, and in the detail
/// `suppressed` of the first record of the key's next window. Bounded memory.
pub struct RefusalTally {
    keys: Mutex<HashMap<(&'static str, u64), Tally>>,
    /// Keys are held as a keyed hash (no string per key, no collisions to aim at).
    hasher: std::hash::RandomState,
}

impl Default for RefusalTally {
    fn default() -> Self {
        RefusalTally::new()
    }
}

impl RefusalTally {
    pub fn new() -> RefusalTally {
        RefusalTally { keys: Mutex::new(HashMap::new()), hasher: std::hash::RandomState::new() }
    }

    /// Notes one refusal of `key` at `now`. `Some(n)`: record it, and say that `n` refusals of
    /// the key's previous window went unrecorded; `None`: counted only.
    pub fn note<K: std::hash::Hash + ?Sized>(
        &self,
        kind: &'static str,
        key: &K,
        now: std::time::Instant,
    ) -> Option<u64> {
        let key = std::hash::BuildHasher::hash_one(&self.hasher, key);
        let Ok(mut keys) = self.keys.lock() else { return None };
        if let Some(t) = keys.get_mut(&(kind, key)) {
            if now.saturating_duration_since(t.window_start) < REPORT_WINDOW {
                t.counted += 1;
                drop(keys);
                metrics::counter!("refusals_suppressed_total", "kind" => kind).increment(1);
                return None;
            }
            let carried = t.counted;
            *t = Tally { window_start: now, counted: 0 };
            return Some(carried);
        }
        if keys.len() >= MAX_TALLIED {
            keys.retain(|_, t| now.saturating_duration_since(t.window_start) < REPORT_WINDOW);
            if keys.len() >= MAX_TALLIED {
                drop(keys);
                metrics::counter!("refusals_suppressed_total", "kind" => kind).increment(1);
                return None;
            }
        }
        keys.insert((kind, key), Tally { window_start: now, counted: 0 });
        Some(0)
    }

    /// Drops windows that are over. A key whose last window counted refusals is kept one
    /// window longer, so its next record still carries the count.
    pub fn evict(&self, now: std::time::Instant) {
        if let Ok(mut keys) = self.keys.lock() {
            keys.retain(|_, t| {
                let age = now.saturating_duration_since(t.window_start);
                age < REPORT_WINDOW || (t.counted > 0 && age < 2 * REPORT_WINDOW)
            });
            keys.shrink_to_fit();
        }
    }

    /// Keys tallied.
    pub fn len(&self) -> usize {
        self.keys.lock().map(|k| k.len()).unwrap_or(0)
    }

    /// Whether no key is tallied.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn the_first_refusal_of_a_window_is_recorded_and_the_rest_carried_into_the_next() {
        let tally = RefusalTally::new();
        let t0 = Instant::now();
        assert_eq!(tally.note("csrf", &1u64, t0), Some(0));
        for i in 0..1999 {
            assert_eq!(tally.note("csrf", &1u64, t0 + Duration::from_millis(i)), None);
        }
        // Another key and another kind have their own windows.
        assert_eq!(tally.note("csrf", &2u64, t0), Some(0));
        assert_eq!(tally.note("locked", &1u64, t0), Some(0));
        // The next window's first record carries the count.
        assert_eq!(tally.note("csrf", &1u64, t0 + REPORT_WINDOW), Some(1999));
        assert_eq!(tally.note("csrf", &1u64, t0 + REPORT_WINDOW + Duration::from_secs(1)), None);
        // A window with a count survives one eviction; quiet ones go.
        tally.evict(t0 + REPORT_WINDOW + Duration::from_secs(30));
        assert_eq!(tally.len(), 1);
        tally.evict(t0 + 3 * REPORT_WINDOW);
        assert!(tally.is_empty());
    }

    #[test]
    fn a_spray_of_keys_stays_bounded() {
        let tally = RefusalTally::new();
        let t0 = Instant::now();
        for k in 0..(MAX_TALLIED as u64 + 10) {
            tally.note("csrf", &k, t0);
        }
        assert_eq!(tally.len(), MAX_TALLIED);
        // Once the windows are over, new keys are recorded again.
        assert_eq!(tally.note("csrf", &u64::MAX, t0 + REPORT_WINDOW), Some(0));
    }
}
