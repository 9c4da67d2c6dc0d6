//! Users, roles, sessions, refresh-token families, login, setup. Knows nothing of HTTP.

pub mod lockout;
pub mod model;
pub mod service;
pub mod setup;
pub mod stream_keys;
pub mod tokens;

pub use model::{Role, SessionKind, SessionRecord, UserRecord};
pub use service::{AuthError, AuthService, IssuedSession, Principal, UserView};
