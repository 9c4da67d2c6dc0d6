//! Users, roles, sessions, refresh-token families, login, setup. Knows nothing of HTTP.

pub mod assertion;
pub mod config;
mod live;
pub mod lockout;
pub mod model;
mod records;
pub mod service;
mod sessions;
pub mod setup;
pub mod stream_keys;
pub mod tokens;
mod users;

pub use model::{
    AuthError, IssuedSession, Principal, Role, SessionKind, SessionRecord, UserPatch, UserRecord, UserView,
    is_session_id,
};
pub use service::AuthService;
