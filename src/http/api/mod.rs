//! poem-openapi endpoints, one file per area; every one is in the OpenAPI document.

pub mod account;
pub mod audit;
pub mod auth;
pub mod dto;
pub mod forward_auth;
pub mod keys;
pub mod secrets;
pub mod stream_keys;
pub mod system;
pub mod tls;
pub mod users;
pub mod vpn;

use std::sync::Arc;

use super::AppState;

/// Every API area, combined for the OpenAPI service.
pub type Apis = (
    system::SystemApi,
    auth::AuthApi,
    account::AccountApi,
    users::UsersApi,
    keys::KeysApi,
    forward_auth::ForwardAuthApi,
    stream_keys::StreamKeysApi,
    audit::AuditApi,
    tls::TlsApi,
    vpn::VpnApi,
    secrets::SecretsApi,
);

pub fn apis(state: Arc<AppState>) -> Apis {
    (
        system::SystemApi { state: state.clone() },
        auth::AuthApi { state: state.clone() },
        account::AccountApi { state: state.clone() },
        users::UsersApi { state: state.clone() },
        keys::KeysApi { state: state.clone() },
        forward_auth::ForwardAuthApi { state: state.clone() },
        stream_keys::StreamKeysApi { state: state.clone() },
        audit::AuditApi { state: state.clone() },
        tls::TlsApi { state: state.clone() },
        vpn::VpnApi { state: state.clone() },
        secrets::SecretsApi { state },
    )
}

/// Tags that group operations in the document.
#[derive(poem_openapi::Tags)]
pub enum ApiTags {
    /// Liveness, readiness and status.
    System,
    /// Setup, login, sessions and tokens.
    Auth,
    /// The caller's own account.
    Account,
    /// User administration (admin).
    Users,
    /// The tamper-evident audit log (admin).
    Audit,
    /// The WireGuard tunnel and its kill switch (admin).
    Vpn,
    /// Named values the gate sends to upstreams, write-only (admin).
    Secrets,
}
