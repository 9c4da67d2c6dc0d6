//! Users, sessions and refresh tokens as stored, and the rules for emails and passwords.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::store::StoreError;

/// A role; the order is the privilege order (`Guest < User < Admin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Guest,
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Guest => "guest",
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "guest" => Some(Role::Guest),
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A user as stored in the `users` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: String,
    pub email: String,
    pub display_name: String,
    pub role: Role,
    /// argon2id PHC string.
    pub password_hash: String,
    pub disabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// How a session was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    /// Cookies, for the Miauflix web client and the admin UI.
    Browser,
    /// Bearer tokens, for API clients.
    Api,
}

/// A session (one refresh-token family) as stored in the `sessions` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub user_id: String,
    pub kind: SessionKind,
    pub created_at: i64,
    /// Last use: login, refresh or an authenticated request. Requests raise it in memory
    /// only (`Live::touch`); the next write that touches the session (the per-user cap, a
    /// refresh) persists it, and listings read it from memory.
    pub last_used_at: i64,
    /// Absolute end (30 days after login by default).
    pub expires_at: i64,
    /// Idle end: the current refresh token is refused after this.
    pub idle_expires_at: i64,
    /// SHA-256 (hex) of the current refresh token.
    pub refresh_hash: String,
    /// Orders uses within the same second (least recently used goes first).
    #[serde(default)]
    pub used_seq: u64,
    pub ip: String,
    pub user_agent: String,
    pub revoked_at: Option<i64>,
}

impl SessionRecord {
    /// Takes a later use `(at, seq)` known in memory; returns whether it was later.
    pub(super) fn note_use(&mut self, at: i64, seq: u64) -> bool {
        let later = (at, seq) > (self.last_used_at, self.used_seq);
        if later {
            (self.last_used_at, self.used_seq) = (at, seq);
        }
        later
    }

    /// Whether the session may still be used at `now`.
    pub fn is_live(&self, now: i64) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

/// A refresh token hash as stored in `refresh_tokens`; rotated tokens are kept until the
/// session ends so that presenting one again can be recognised as reuse.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshRecord {
    pub session_id: String,
    pub rotated_at: Option<i64>,
}

/// Trims and lower-cases an email, and checks its shape.
pub fn normalize_email(raw: &str) -> Result<String, &'static str> {
    let email = raw.trim().to_lowercase();
    if email.is_empty() || email.len() > 254 {
        return Err("The email address must have between 1 and 254 characters.");
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err("The email address must contain @.");
    };
    let ok_chars = |s: &str| !s.is_empty() && s.chars().all(|c| !c.is_whitespace() && !c.is_control() && c != '@');
    if !ok_chars(local) || !ok_chars(domain) || local.len() > 64 || domain.starts_with('.') || domain.ends_with('.') {
        return Err("The email address is not valid.");
    }
    Ok(email)
}

/// The part of an email before `@`, the default display name.
pub fn default_display_name(email: &str) -> String {
    email.split('@').next().unwrap_or(email).to_string()
}

static COMMON_PASSWORDS: &str = include_str!("../../assets/common-passwords.txt");

/// Whether the password is one of the 10,000 most common (case-insensitive).
pub fn is_common_password(password: &str) -> bool {
    let lower = password.to_lowercase();
    COMMON_PASSWORDS.lines().any(|p| p == lower)
}

/// Checks the password rules: length, not common, not the email. The messages reach clients,
/// which refuse error text naming a credential field, so they say "passphrase".
pub fn check_password(password: &str, email: &str, min_len: usize) -> Result<(), String> {
    let len = password.chars().count();
    if len < min_len {
        return Err(format!("The passphrase must have at least {min_len} characters."));
    }
    if len > 256 {
        return Err("The passphrase must have at most 256 characters.".into());
    }
    if is_common_password(password) {
        return Err("This passphrase is too common; choose another.".into());
    }
    let lower = password.to_lowercase();
    if lower == email.to_lowercase() || lower == default_display_name(email).to_lowercase() {
        return Err("The passphrase must not be your email address.".into());
    }
    Ok(())
}

/// Why an auth operation failed. `Display` is for logs; the HTTP layer maps each variant to
/// a fixed client message.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("authentication required")]
    Unauthorized,
    #[error("forbidden")]
    Forbidden,
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("account locked for {0} s")]
    Locked(i64),
    /// A failure that is not the client's (the store, a primitive, signing): logged, never
    /// shown.
    #[error("internal: {0}")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        AuthError::Internal(Box::new(e))
    }
}

impl From<crate::crypto::CryptoError> for AuthError {
    fn from(e: crate::crypto::CryptoError) -> Self {
        AuthError::Internal(Box::new(e))
    }
}

impl From<super::tokens::TokenError> for AuthError {
    fn from(e: super::tokens::TokenError) -> Self {
        AuthError::Internal(Box::new(e))
    }
}

/// A user as shown to clients (no hash); also the admin protocol's user (camelCase JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub display_name: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: i64,
}

impl From<&UserRecord> for UserView {
    fn from(u: &UserRecord) -> Self {
        UserView {
            id: u.id.clone(),
            email: u.email.clone(),
            display_name: u.display_name.clone(),
            role: u.role,
            disabled: u.disabled,
            created_at: u.created_at,
        }
    }
}

/// An authenticated request's identity; the role comes from the store's view, not the token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: String,
    pub session_id: String,
    pub role: Role,
    pub email: String,
    pub display_name: String,
}

impl Principal {
    /// Succeeds when the principal has at least `min`.
    pub fn require(&self, min: Role) -> Result<&Principal, AuthError> {
        if self.role >= min { Ok(self) } else { Err(AuthError::Forbidden) }
    }
}

/// What login and refresh hand out. The tokens go into cookies or the token response,
/// never into logs.
pub struct IssuedSession {
    pub session_id: String,
    pub user: UserView,
    pub access_token: String,
    pub refresh_token: Zeroizing<String>,
    pub expires_in: i64,
    /// Seconds the refresh token stays valid if unused.
    pub refresh_expires_in: i64,
}

/// Fields an admin may change on a user.
#[derive(Debug, Default, Clone)]
pub struct UserPatch {
    pub display_name: Option<String>,
    pub role: Option<Role>,
    pub disabled: Option<bool>,
}

/// Session ids are 22 base64url characters (128 bits); anything else is refused unread.
pub fn is_session_id(s: &str) -> bool {
    s.len() == 22 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
