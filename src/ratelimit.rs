//! GCRA rate limits (governor) per class, keyed by client IP or user. Idle keys are evicted
//! in the background so memory stays bounded however many distinct keys arrive; denials are
//! reported once per key per window so a flood cannot flood the log.

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

    /// Checks every quota; the message names the class.
    pub fn validate(&self) -> Result<(), String> {
        for class in [RateClass::Auth, RateClass::Api, RateClass::Stream, RateClass::Global] {
            let q = self.quota(class);
            if !(1..=100_000_000).contains(&q.per_minute) || !(1..=10_000_000).contains(&q.burst) {
                return Err(format!(
                    "rate_limits.{}: per_minute must be 1..=100000000 and burst 1..=10000000",
                    class.as_str()
                ));
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
    /// True for the first denial of this key in this window (log it); false afterwards.
    pub first_in_window: bool,
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
    /// (class, key) → when its denial was last reported.
    reported: Mutex<HashMap<(RateClass, String), std::time::Instant>>,
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
            reported: Mutex::new(HashMap::new()),
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
        match key.parse::<std::net::IpAddr>() {
            Ok(ip) => {
                let addr = AddrKey::of(ip);
                self.check_hashed(class, std::hash::BuildHasher::hash_one(&self.hasher, addr), &|| addr.to_string())
            }
            Err(_) => {
                self.check_hashed(class, std::hash::BuildHasher::hash_one(&self.hasher, key), &|| key.to_string())
            }
        }
    }

    /// Counts one request of a signed-in user against `class`, whatever address they use.
    pub fn check_user(&self, class: RateClass, user_id: &str) -> Result<Allowed, Denied> {
        let hashed = std::hash::BuildHasher::hash_one(&self.hasher, ("user", user_id));
        self.check_hashed(class, hashed, &|| format!("user:{user_id}"))
    }

    /// `key` names the key in denial reports (only called on a denial).
    fn check_hashed(&self, class: RateClass, hashed: u64, key: &dyn Fn() -> String) -> Result<Allowed, Denied> {
        let q = self.cfg.quota(class);
        match self.limiter(class).check_key(&hashed) {
            Ok(snapshot) => {
                Ok(Allowed { limit: q.per_minute, remaining: snapshot.remaining_burst_capacity(), window_secs: 60 })
            }
            Err(not_until) => {
                let retry_after = not_until.wait_time_from(self.clock.now());
                let first_in_window = self.note_denial(class, &key());
                Err(Denied { class, limit: q.per_minute, window_secs: 60, retry_after, first_in_window })
            }
        }
    }

    fn note_denial(&self, class: RateClass, key: &str) -> bool {
        let Ok(mut reported) = self.reported.lock() else { return false };
        let now = std::time::Instant::now();
        match reported.get(&(class, key.to_string())) {
            Some(at) if now.duration_since(*at) < REPORT_WINDOW => false,
            _ => {
                // Bounded: a spray of distinct keys cannot grow this without limit.
                if reported.len() >= 100_000 {
                    reported.retain(|_, at| now.duration_since(*at) < REPORT_WINDOW);
                    if reported.len() >= 100_000 {
                        return false;
                    }
                }
                reported.insert((class, key.to_string()), now);
                true
            }
        }
    }

    /// Drops keys whose state is back to fresh, and stale denial reports.
    pub fn evict_idle(&self) {
        for l in [&self.auth, &self.api, &self.stream, &self.global] {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Ok(mut reported) = self.reported.lock() {
            let now = std::time::Instant::now();
            reported.retain(|_, at| now.duration_since(*at) < REPORT_WINDOW);
            reported.shrink_to_fit();
        }
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
