//! Users, roles, sessions, refresh-token families, login, setup. Knows nothing of HTTP.

pub mod events;
pub mod model;
pub mod service;
pub mod setup;
pub mod tokens;

pub use events::{ClientInfo, EventKind, SecurityEvent, Severity};
pub use model::{Role, SessionKind, SessionRecord, UserRecord};
pub use service::{AuthError, AuthService, IssuedSession, Principal, UserView};

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
