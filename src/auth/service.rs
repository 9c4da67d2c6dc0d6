//! The auth service: every auth operation, each one atomic in the store and mirrored in the
//! in-memory [`Live`] view of sessions and users, so authenticating a request costs no disk
//! read and a revocation takes effect on the very next request. The operations live in
//! `sessions.rs` (login, refresh, authenticate, logout, revocation) and `users.rs` (setup,
//! user administration, passwords); the table access they share in `records.rs`.

use std::path::PathBuf;

use super::config::AuthConfig;
use super::live::Live;
use super::lockout::{Lockout, LockoutConfig};
use super::model::{AuthError, Principal, UserRecord, check_password};
use super::tokens::{KeyError, SigningKeys};
use crate::clock::now;
use crate::crypto::{Keyring, PasswordHasher};
use crate::store::{Store, StoreError, tables};

/// The auth service.
pub struct AuthService {
    pub(super) store: Store,
    pub(super) hasher: PasswordHasher,
    pub(super) keys: SigningKeys,
    pub(super) live: Live,
    pub(super) cfg: AuthConfig,
    pub(super) setup_token_path: PathBuf,
    pub(super) setup_lock: tokio::sync::Mutex<()>,
    pub(super) lockout: Lockout,
    /// Refused attempts on a locked email, recorded once per email per window.
    pub(super) locked_refusals: crate::ratelimit::RefusalTally,
    pub(super) stream_keys: super::stream_keys::StreamKeys,
    pub(super) assertions: super::assertion::Assertions,
    pub(super) audit: crate::audit::Audit,
}

impl AuthService {
    /// Loads signing keys and the live view from the store.
    pub async fn open(
        store: Store,
        keyring: &Keyring,
        hasher: PasswordHasher,
        cfg: AuthConfig,
        lockout: LockoutConfig,
        setup_token_path: PathBuf,
        audit: crate::audit::Audit,
    ) -> Result<AuthService, KeyError> {
        let keys = SigningKeys::load_or_init(&store, keyring, &cfg.issuer, &cfg.audience, cfg.access_ttl_secs).await?;
        let stream_keys = super::stream_keys::StreamKeys::load_or_init(&store, keyring).await?;
        let service = AuthService {
            store,
            hasher,
            keys,
            live: Live::default(),
            cfg,
            setup_token_path,
            setup_lock: tokio::sync::Mutex::new(()),
            lockout: Lockout::new(lockout),
            locked_refusals: crate::ratelimit::RefusalTally::new(),
            stream_keys,
            assertions: Default::default(),
            audit,
        };
        service.live.reload(&service.store, now())?;
        Ok(service)
    }

    /// The signing keys (for JWKS).
    pub fn keys(&self) -> &SigningKeys {
        &self.keys
    }

    /// The configuration in force.
    pub fn config(&self) -> &AuthConfig {
        &self.cfg
    }

    /// Whether the first admin still has to be made.
    pub fn setup_required(&self) -> bool {
        self.live.no_admin()
    }

    pub(super) fn validate_new_password(&self, password: &str, email: &str) -> Result<(), AuthError> {
        check_password(password, email, self.cfg.password_min_length).map_err(AuthError::Invalid)
    }

    pub(super) fn find_user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        self.store.read(|txn| {
            let emails = txn.open_table(tables::USER_EMAILS)?;
            let Some(id) = emails.get(email)?.map(|v| v.value().to_string()) else { return Ok(None) };
            let users = txn.open_table(tables::USERS)?;
            match users.get(id.as_str())? {
                Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
                None => Ok(None),
            }
        })
    }

    pub(super) fn read_user(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        self.store.read(|txn| {
            let users = txn.open_table(tables::USERS)?;
            match users.get(id)? {
                Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
                None => Ok(None),
            }
        })
    }

    /// The audit log.
    pub fn audit(&self) -> &crate::audit::Audit {
        &self.audit
    }

    /// The signed identity assertion for a proxied request (`auth::assertion`): cached, signed
    /// again when it nears its end or the keys were reloaded.
    pub fn identity_assertion(
        &self,
        principal: &Principal,
        audience: &str,
        method: &str,
        path: &str,
    ) -> Result<bytes::Bytes, super::tokens::TokenError> {
        self.assertions.get(&self.keys, principal, audience, method, path, now())
    }

    /// Sessions currently live (for the `auth_active_sessions` gauge).
    pub fn active_sessions(&self) -> usize {
        self.live.session_count()
    }
}

/// `auth_logins_total{result}`: `success`, `failure` (a wrong password or setup token) or
/// `locked` (refused while the account is locked), counted where the decision is made.
pub(super) fn login_metric(result: &'static str) {
    metrics::counter!("auth_logins_total", "result" => result).increment(1);
}
