//! Why an admin command failed. `Display` is the one line the caller gets (over the socket as
//! `Response::Error`, on a stopped gate straight from the CLI); the cause stays attached as
//! the source.

use crate::auth::AuthError;
use crate::auth::tokens::KeyError;
use crate::crypto::CryptoError;
use crate::store::StoreError;
use crate::vpn::{NftError, VpnError};

/// A refused or failed admin command.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A blank required field.
    #[error("--{0} is required")]
    Missing(&'static str),
    /// A password or key that should have come on standard input.
    #[error("{0} must be given on standard input")]
    NoSecret(&'static str),
    /// An auth refusal, as one line; an internal cause is logged where it is converted and
    /// reads "internal error; see the gate's log".
    #[error("{}", auth_message(.0))]
    Auth(#[source] AuthError),
    #[error("the gate is not running; it connects when it starts")]
    NotRunning,
    #[error(transparent)]
    Vpn(#[from] VpnError),
    #[error(transparent)]
    Killswitch(#[from] NftError),
    #[error("{0}")]
    MasterKey(#[source] CryptoError),
    /// Key rotation or retirement, with its context chain on the one line.
    #[error("{0:#}")]
    Maintenance(#[source] anyhow::Error),
    #[error("{0}")]
    Keys(#[from] KeyError),
    #[error("{0}")]
    Export(#[source] crate::audit::ExportError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Secrets(#[from] crate::secrets::SecretsError),
    #[error("{0}")]
    NotFound(String),
}

impl From<AuthError> for AdminError {
    fn from(e: AuthError) -> AdminError {
        if let AuthError::Internal(cause) = &e {
            tracing::error!(error = %cause, "admin command failed");
        }
        AdminError::Auth(e)
    }
}

/// The one line for an auth failure: `Display`, or the message an `Invalid`/`Conflict`
/// carries; never an internal cause.
fn auth_message(e: &AuthError) -> String {
    match e {
        AuthError::NotFound => "no such user".into(),
        AuthError::Invalid(m) | AuthError::Conflict(m) => m.clone(),
        AuthError::Forbidden => "not allowed".into(),
        AuthError::Internal(_) => "internal error; see the gate's log".into(),
        other => other.to_string(),
    }
}
