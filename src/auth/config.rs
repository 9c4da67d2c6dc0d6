//! `[auth]`: sessions and tokens — the section's type, its defaults and its checks. `config`
//! composes it.

use serde::{Deserialize, Serialize};

use crate::validate::{ConfigError, bad};

/// `[auth]`: sessions and tokens.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `iss` of access tokens.
    pub issuer: String,
    /// `aud` of access tokens.
    pub audience: String,
    pub access_ttl_secs: i64,
    /// A refresh token unused this long is refused.
    pub refresh_idle_secs: i64,
    /// A session ends this long after login, whatever its use.
    pub session_max_secs: i64,
    /// Live sessions per user; the least recently used goes when a new one is made.
    pub max_sessions_per_user: usize,
    pub password_min_length: usize,
    /// A rotated refresh token presented again within this many seconds is refused
    /// without revoking the session (two tabs refreshing at once); later, it is reuse.
    pub refresh_reuse_grace_secs: i64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            issuer: "miauflix-gate".into(),
            audience: "miauflix".into(),
            access_ttl_secs: 900,
            refresh_idle_secs: 7 * 86_400,
            session_max_secs: 30 * 86_400,
            max_sessions_per_user: 10,
            password_min_length: 12,
            refresh_reuse_grace_secs: 5,
        }
    }
}

impl AuthConfig {
    /// Checks what types alone cannot; keys are relative to `[auth]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.issuer.trim().is_empty() || self.audience.trim().is_empty() {
            return bad("issuer", "issuer and audience must not be empty");
        }
        if !(60..=3600).contains(&self.access_ttl_secs) {
            return bad("access_ttl_secs", "must be between 60 and 3600");
        }
        if !(300..=90 * 86_400).contains(&self.refresh_idle_secs) {
            return bad("refresh_idle_secs", "must be between 300 and 7776000");
        }
        if self.session_max_secs < self.refresh_idle_secs || self.session_max_secs > 365 * 86_400 {
            return bad("session_max_secs", "must be at least refresh_idle_secs and at most a year");
        }
        if !(1..=100).contains(&self.max_sessions_per_user) {
            return bad("max_sessions_per_user", "must be between 1 and 100");
        }
        if !(8..=128).contains(&self.password_min_length) {
            return bad("password_min_length", "must be between 8 and 128");
        }
        if !(0..=60).contains(&self.refresh_reuse_grace_secs) {
            return bad("refresh_reuse_grace_secs", "must be between 0 and 60");
        }
        Ok(())
    }
}
