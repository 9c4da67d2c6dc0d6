//! Users, roles, sessions, refresh-token families, login, setup. Knows nothing of HTTP.

pub mod events;
pub mod lockout;
pub mod model;
pub mod service;
pub mod setup;
pub mod stream_keys;
pub mod tokens;

pub use events::{ClientInfo, EventKind, SecurityEvent, Severity};
pub use model::{Role, SessionKind, SessionRecord, UserRecord};
pub use service::{AuthError, AuthService, IssuedSession, Principal, UserView};

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A process-wide strictly increasing counter seeded from the clock, to order uses within a second.
pub fn use_seq() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let next = |cur: u64| Some(cur.max(nanos).saturating_add(1));
    match SEQ.fetch_update(Ordering::Relaxed, Ordering::Relaxed, next) {
        Ok(prev) | Err(prev) => prev.max(nanos).saturating_add(1),
    }
}
