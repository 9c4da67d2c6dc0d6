//! The auth service: every auth operation, each one atomic in the store and mirrored in an
//! in-memory view of live sessions and users, so authenticating a request costs no disk read
//! and a revocation takes effect on the very next request.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use redb::{ReadableTable, WriteTransaction};
use zeroize::Zeroizing;

use super::lockout::{Attempt, FailureOutcome, Lockout, LockoutConfig};
use super::model::{
    RefreshRecord, Role, SessionKind, SessionRecord, UserRecord, check_password, default_display_name, normalize_email,
};
use super::setup;
use super::tokens::{KeyError, SigningKeys};
use crate::audit::{ClientInfo, EventKind, SecurityEvent, Severity};
use crate::clock::now;
use crate::config::AuthConfig;
use crate::crypto::{Keyring, PasswordHasher};
use crate::store::{Store, StoreError, tables};

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
    #[error("internal: {0}")]
    Internal(String),
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        AuthError::Internal(e.to_string())
    }
}

impl From<crate::crypto::CryptoError> for AuthError {
    fn from(e: crate::crypto::CryptoError) -> Self {
        AuthError::Internal(e.to_string())
    }
}

/// A user as shown to clients (no hash).
#[derive(Debug, Clone)]
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

#[derive(Clone)]
struct LiveUser {
    email: String,
    display_name: String,
    role: Role,
    disabled: bool,
}

struct LiveSession {
    user_id: String,
    expires_at: i64,
}

#[derive(Default)]
struct LiveState {
    users: HashMap<String, LiveUser>,
    sessions: HashMap<String, LiveSession>,
}

/// Fields an admin may change on a user.
#[derive(Debug, Default, Clone)]
pub struct UserPatch {
    pub display_name: Option<String>,
    pub role: Option<Role>,
    pub disabled: Option<bool>,
}

/// The auth service.
pub struct AuthService {
    store: Store,
    keyring: Arc<Keyring>,
    hasher: PasswordHasher,
    keys: SigningKeys,
    live: RwLock<LiveState>,
    cfg: AuthConfig,
    setup_token_path: PathBuf,
    setup_lock: tokio::sync::Mutex<()>,
    lockout: Lockout,
    /// Refused attempts on a locked email, recorded once per email per window.
    locked_refusals: crate::ratelimit::RefusalTally,
    stream_keys: super::stream_keys::StreamKeys,
    audit: crate::audit::Audit,
}

fn sha256_hex(token: &str) -> String {
    hex::encode(crate::crypto::sha256(token.as_bytes()))
}

fn new_id() -> String {
    hex::encode(crate::crypto::random_bytes::<16>())
}

/// Session ids are 22 base64url characters (128 bits); anything else is refused unread.
pub fn is_session_id(s: &str) -> bool {
    s.len() == 22 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

// ---- transaction helpers (run inside the writer; must only touch the transaction) ----

fn get_json<T: serde::de::DeserializeOwned>(
    txn: &WriteTransaction,
    def: redb::TableDefinition<&str, &[u8]>,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let t = txn.open_table(def)?;
    let v = t.get(key)?;
    match v {
        Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
        None => Ok(None),
    }
}

fn put_json<T: serde::Serialize>(
    txn: &WriteTransaction,
    def: redb::TableDefinition<&str, &[u8]>,
    key: &str,
    value: &T,
) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value)?;
    let mut t = txn.open_table(def)?;
    t.insert(key, bytes.as_slice())?;
    Ok(())
}

fn user_session_ids(txn: &WriteTransaction, user_id: &str) -> Result<Vec<String>, StoreError> {
    let t = txn.open_table(tables::USER_SESSIONS)?;
    let lo = format!("{user_id}/");
    let hi = format!("{user_id}0");
    let mut out = Vec::new();
    for row in t.range(lo.as_str()..hi.as_str())? {
        let (k, _) = row?;
        if let Some((_, sid)) = k.value().split_once('/') {
            out.push(sid.to_string());
        }
    }
    Ok(out)
}

fn insert_refresh(txn: &WriteTransaction, session_id: &str, hash: &str) -> Result<(), StoreError> {
    put_json(
        txn,
        tables::REFRESH_TOKENS,
        hash,
        &RefreshRecord { session_id: session_id.to_string(), rotated_at: None },
    )?;
    let mut idx = txn.open_table(tables::SESSION_REFRESH)?;
    idx.insert(format!("{session_id}/{hash}").as_str(), ())?;
    Ok(())
}

/// Ends a session: marks it revoked, deletes its refresh tokens and index entries.
fn end_session(txn: &WriteTransaction, session: &mut SessionRecord, now: i64) -> Result<(), StoreError> {
    if session.revoked_at.is_none() {
        session.revoked_at = Some(now);
    }
    put_json(txn, tables::SESSIONS, &session.id, session)?;
    let hashes: Vec<String> = {
        let idx = txn.open_table(tables::SESSION_REFRESH)?;
        let lo = format!("{}/", session.id);
        let hi = format!("{}0", session.id);
        let mut v = Vec::new();
        for row in idx.range(lo.as_str()..hi.as_str())? {
            let (k, _) = row?;
            v.push(k.value().to_string());
        }
        v
    };
    let mut idx = txn.open_table(tables::SESSION_REFRESH)?;
    let mut rt = txn.open_table(tables::REFRESH_TOKENS)?;
    for key in hashes {
        idx.remove(key.as_str())?;
        if let Some((_, hash)) = key.split_once('/') {
            rt.remove(hash)?;
        }
    }
    Ok(())
}

/// Deletes a session record entirely (used for expired or revoked sessions beyond the cap).
fn forget_session(txn: &WriteTransaction, session: &mut SessionRecord, now: i64) -> Result<(), StoreError> {
    end_session(txn, session, now)?;
    txn.open_table(tables::SESSIONS)?.remove(session.id.as_str())?;
    txn.open_table(tables::USER_SESSIONS)?.remove(format!("{}/{}", session.user_id, session.id).as_str())?;
    Ok(())
}

/// Ends every live session of a user except `keep`; returns the ended session ids.
fn end_user_sessions(
    txn: &WriteTransaction,
    user_id: &str,
    keep: Option<&str>,
    now: i64,
) -> Result<Vec<String>, StoreError> {
    let mut ended = Vec::new();
    for sid in user_session_ids(txn, user_id)? {
        if Some(sid.as_str()) == keep {
            continue;
        }
        if let Some(mut s) = get_json::<SessionRecord>(txn, tables::SESSIONS, &sid)? {
            if s.is_live(now) {
                ended.push(sid.clone());
            }
            forget_session(txn, &mut s, now)?;
        }
    }
    Ok(ended)
}

enum RefreshOutcome {
    Rotated { session: Box<SessionRecord>, user: Box<UserRecord> },
    Raced,
    Reused { session_id: String, user_id: String },
    Refused,
}

impl AuthService {
    /// Loads signing keys and the live view from the store.
    pub async fn open(
        store: Store,
        keyring: Arc<Keyring>,
        hasher: PasswordHasher,
        cfg: AuthConfig,
        lockout: LockoutConfig,
        setup_token_path: PathBuf,
        audit: crate::audit::Audit,
    ) -> Result<AuthService, KeyError> {
        let keys = SigningKeys::load_or_init(&store, &keyring, &cfg.issuer, &cfg.audience, cfg.access_ttl_secs).await?;
        let stream_keys = super::stream_keys::StreamKeys::load_or_init(&store, &keyring).await?;
        let service = AuthService {
            store,
            keyring,
            hasher,
            keys,
            live: RwLock::new(LiveState::default()),
            cfg,
            setup_token_path,
            setup_lock: tokio::sync::Mutex::new(()),
            lockout: Lockout::new(lockout),
            locked_refusals: crate::ratelimit::RefusalTally::new(),
            stream_keys,
            audit,
        };
        service.reload_live()?;
        Ok(service)
    }

    /// Rebuilds the in-memory view from the store.
    fn reload_live(&self) -> Result<(), StoreError> {
        let now = now();
        let state = self.store.read(|txn| {
            let mut state = LiveState::default();
            let users = txn.open_table(tables::USERS)?;
            for row in users.iter()? {
                let (_, v) = row?;
                let u: UserRecord = serde_json::from_slice(v.value())?;
                state.users.insert(
                    u.id.clone(),
                    LiveUser { email: u.email, display_name: u.display_name, role: u.role, disabled: u.disabled },
                );
            }
            let sessions = txn.open_table(tables::SESSIONS)?;
            for row in sessions.iter()? {
                let (_, v) = row?;
                let s: SessionRecord = serde_json::from_slice(v.value())?;
                if s.is_live(now) {
                    state.sessions.insert(s.id.clone(), LiveSession { user_id: s.user_id, expires_at: s.expires_at });
                }
            }
            Ok(state)
        })?;
        if let Ok(mut live) = self.live.write() {
            *live = state;
        }
        Ok(())
    }

    fn live_user_put(&self, u: &UserRecord) {
        if let Ok(mut live) = self.live.write() {
            live.users.insert(
                u.id.clone(),
                LiveUser {
                    email: u.email.clone(),
                    display_name: u.display_name.clone(),
                    role: u.role,
                    disabled: u.disabled,
                },
            );
        }
    }

    fn live_sessions_remove(&self, ids: &[String]) {
        if let Ok(mut live) = self.live.write() {
            for id in ids {
                live.sessions.remove(id);
            }
        }
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
        self.live.read().map(|l| !l.users.values().any(|u| u.role == Role::Admin)).unwrap_or(false)
    }

    fn validate_new_password(&self, password: &str, email: &str) -> Result<(), AuthError> {
        check_password(password, email, self.cfg.password_min_length).map_err(AuthError::Invalid)
    }

    /// Creates the first admin with the one-time setup token, then deletes the token.
    pub async fn complete_setup(
        &self,
        email: &str,
        password: Zeroizing<String>,
        token: &str,
        client: &ClientInfo,
    ) -> Result<UserView, AuthError> {
        let _guard = self.setup_lock.lock().await;
        if !self.setup_required() {
            return Err(AuthError::NotFound);
        }
        let expected = setup::read_token(&self.setup_token_path).ok_or(AuthError::NotFound)?;
        if !crate::crypto::constant_time_eq(expected.as_bytes(), token.trim().as_bytes()) {
            login_metric("failure");
            // Free to repeat (no hash): recorded once per address per window, the rest counted.
            if let Some(suppressed) = self.locked_refusals.note("setup_token", &client.ip, std::time::Instant::now()) {
                SecurityEvent::new(EventKind::LoginFailed, Severity::Warning, client)
                    .target("setup")
                    .detail("reason", "bad setup token")
                    .suppressed(suppressed)
                    .record(&self.audit)
                    .await;
            }
            return Err(AuthError::Unauthorized);
        }
        let email = normalize_email(email).map_err(|e| AuthError::Invalid(e.into()))?;
        self.validate_new_password(&password, &email)?;
        let user = self.insert_user(&email, None, Role::Admin, password, true).await?;
        let _ = std::fs::remove_file(&self.setup_token_path);
        SecurityEvent::new(EventKind::SetupCompleted, Severity::Info, client)
            .actor(&user.id)
            .target(&user.email)
            .record(&self.audit)
            .await;
        Ok(user)
    }

    async fn insert_user(
        &self,
        email: &str,
        display_name: Option<String>,
        role: Role,
        password: Zeroizing<String>,
        only_if_no_admin: bool,
    ) -> Result<UserView, AuthError> {
        let hash = self.hasher.hash(password).await?;
        let now = now();
        let display_name = display_name
            .map(|d| d.trim().to_string())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| default_display_name(email));
        let rec = UserRecord {
            id: new_id(),
            email: email.to_string(),
            display_name,
            role,
            password_hash: hash,
            disabled: false,
            created_at: now,
            updated_at: now,
        };
        let stored = rec.clone();
        let result = self
            .store
            .write(move |txn| {
                if txn.open_table(tables::USER_EMAILS)?.get(stored.email.as_str())?.is_some() {
                    return Ok(Err(AuthError::Conflict("A user with this email already exists.".into())));
                }
                if only_if_no_admin {
                    let users = txn.open_table(tables::USERS)?;
                    for row in users.iter()? {
                        let (_, v) = row?;
                        let u: UserRecord = serde_json::from_slice(v.value())?;
                        if u.role == Role::Admin {
                            return Ok(Err(AuthError::NotFound));
                        }
                    }
                }
                put_json(txn, tables::USERS, &stored.id, &stored)?;
                txn.open_table(tables::USER_EMAILS)?.insert(stored.email.as_str(), stored.id.as_str())?;
                Ok(Ok(()))
            })
            .await?;
        result?;
        self.live_user_put(&rec);
        Ok(UserView::from(&rec))
    }

    /// The user with this email (normalised), for the admin CLI.
    pub fn user_by_email(&self, email: &str) -> Result<UserView, AuthError> {
        let email = normalize_email(email).map_err(|e| AuthError::Invalid(e.into()))?;
        self.find_user_by_email(&email)?.map(|u| UserView::from(&u)).ok_or(AuthError::NotFound)
    }

    fn find_user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
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

    fn read_user(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        self.store.read(|txn| {
            let users = txn.open_table(tables::USERS)?;
            match users.get(id)? {
                Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
                None => Ok(None),
            }
        })
    }

    /// Checks email and password; unknown and disabled users cost the same and fail the same.
    async fn check_credentials(
        &self,
        email: &str,
        password: Zeroizing<String>,
        client: &ClientInfo,
    ) -> Result<UserRecord, AuthError> {
        let normalized = normalize_email(email).ok();
        // Counted per submitted email (normalised when it parses), existing or not.
        let lock_key = normalized.clone().unwrap_or_else(|| email.trim().to_lowercase().chars().take(254).collect());
        // The attempt takes its place in the budget before the hash (given back on success).
        let mut attempt = match self.lockout.reserve(&lock_key, now()) {
            Ok(attempt) => attempt,
            Err(secs) => {
                self.refused_locked(&lock_key, None, client).await;
                return Err(AuthError::Locked(secs));
            }
        };
        let user = match &normalized {
            Some(e) => self.find_user_by_email(e)?,
            None => None,
        };
        attempt.checking();
        if password.chars().count() > 256 {
            // Never hash unbounded input; still costs one hash.
            let _ = self.hasher.verify(None, Zeroizing::new(String::new())).await;
            return Err(self.login_failed(attempt, &lock_key, user.as_ref(), "password too long", client).await);
        }
        let ok = self.hasher.verify(user.as_ref().map(|u| u.password_hash.clone()), password.clone()).await?;
        let mut user = match user {
            Some(u) if ok => u,
            other => {
                return Err(self.login_failed(attempt, &lock_key, other.as_ref(), "bad credentials", client).await);
            }
        };
        if user.disabled {
            return Err(self.login_failed(attempt, &lock_key, Some(&user), "user disabled", client).await);
        }
        attempt.succeeded(now());
        if self.hasher.needs_rehash(&user.password_hash) {
            user.password_hash = self.hasher.hash(password).await?;
            user.updated_at = now();
        }
        Ok(user)
    }

    /// Records an attempt refused because the email is locked (or its budget is spent by
    /// attempts in flight): free to repeat, so once per email per window, with the count of
    /// the previous window's unrecorded refusals.
    async fn refused_locked(&self, lock_key: &str, user: Option<&UserRecord>, client: &ClientInfo) {
        login_metric("locked");
        let Some(suppressed) = self.locked_refusals.note("account_locked", lock_key, std::time::Instant::now()) else {
            return;
        };
        let mut ev = SecurityEvent::new(EventKind::LoginFailed, Severity::Warning, client)
            .target(lock_key)
            .detail("reason", "account locked");
        if let Some(u) = user {
            ev = ev.actor(&u.id).detail("user", &u.id);
        }
        ev.suppressed(suppressed).record(&self.audit).await;
    }

    /// Counts a failed attempt (which may lock the email) and records it, and the lock. The
    /// submitted email is the target; an existing account's id goes in `detail.user`, so its
    /// owner sees the attempt.
    async fn login_failed(
        &self,
        attempt: Attempt<'_>,
        lock_key: &str,
        user: Option<&UserRecord>,
        reason: &str,
        client: &ClientInfo,
    ) -> AuthError {
        let outcome = attempt.failed(now());
        login_metric("failure");
        if let FailureOutcome::Locked(_) = outcome {
            metrics::counter!("account_lockouts_total").increment(1);
        }
        let mut ev = SecurityEvent::new(EventKind::LoginFailed, Severity::Warning, client)
            .target(lock_key)
            .detail("reason", reason);
        if let Some(u) = user {
            ev = ev.detail("user", &u.id);
        }
        ev.record(&self.audit).await;
        if let FailureOutcome::Locked(secs) = outcome {
            let mut ev = SecurityEvent::new(EventKind::AccountLocked, Severity::Warning, client)
                .target(lock_key)
                .detail("seconds", secs.to_string());
            if let Some(u) = user {
                ev = ev.detail("user", &u.id);
            }
            ev.record(&self.audit).await;
        }
        AuthError::InvalidCredentials
    }

    /// Logs in: checks credentials and opens a session.
    pub async fn login(
        &self,
        email: &str,
        password: Zeroizing<String>,
        kind: SessionKind,
        client: &ClientInfo,
    ) -> Result<IssuedSession, AuthError> {
        let user = self.check_credentials(email, password, client).await?;
        let issued = self.open_session(user, kind, client).await?;
        login_metric("success");
        SecurityEvent::new(EventKind::LoginSucceeded, Severity::Info, client)
            .actor(&issued.user.id)
            .target(&issued.user.email)
            .detail("session", &issued.session_id)
            .detail("kind", if kind == SessionKind::Browser { "browser" } else { "api" })
            .record(&self.audit)
            .await;
        Ok(issued)
    }

    async fn open_session(
        &self,
        user: UserRecord,
        kind: SessionKind,
        client: &ClientInfo,
    ) -> Result<IssuedSession, AuthError> {
        let now = now();
        let session_id = crate::crypto::random_token::<16>();
        let refresh = Zeroizing::new(crate::crypto::random_token::<32>());
        let hash = sha256_hex(&refresh);
        let session = SessionRecord {
            id: session_id.clone(),
            user_id: user.id.clone(),
            kind,
            created_at: now,
            last_used_at: now,
            expires_at: now + self.cfg.session_max_secs,
            idle_expires_at: now + self.cfg.refresh_idle_secs.min(self.cfg.session_max_secs),
            refresh_hash: hash.clone(),
            used_seq: crate::clock::use_seq(),
            ip: client.ip.clone(),
            user_agent: crate::audit::event::sanitize(&client.user_agent, 200),
            revoked_at: None,
        };
        let max = self.cfg.max_sessions_per_user;
        let (stored_user, stored_session) = (user.clone(), session.clone());
        let evicted = self
            .store
            .write(move |txn| {
                // Keep the user record current (a rehash may have changed it).
                put_json(txn, tables::USERS, &stored_user.id, &stored_user)?;
                let mut live = Vec::new();
                for sid in user_session_ids(txn, &stored_user.id)? {
                    if let Some(mut s) = get_json::<SessionRecord>(txn, tables::SESSIONS, &sid)? {
                        if s.is_live(now) && now < s.idle_expires_at {
                            live.push(s);
                        } else {
                            forget_session(txn, &mut s, now)?;
                        }
                    }
                }
                live.sort_by_key(|s| (s.last_used_at, s.used_seq));
                let mut evicted = Vec::new();
                while live.len() >= max {
                    let mut s = live.remove(0);
                    forget_session(txn, &mut s, now)?;
                    evicted.push(s.id.clone());
                }
                put_json(txn, tables::SESSIONS, &stored_session.id, &stored_session)?;
                txn.open_table(tables::USER_SESSIONS)?
                    .insert(format!("{}/{}", stored_session.user_id, stored_session.id).as_str(), ())?;
                insert_refresh(txn, &stored_session.id, &stored_session.refresh_hash)?;
                Ok(evicted)
            })
            .await?;
        if let Ok(mut live) = self.live.write() {
            for id in &evicted {
                live.sessions.remove(id);
            }
            live.sessions
                .insert(session.id.clone(), LiveSession { user_id: user.id.clone(), expires_at: session.expires_at });
        }
        self.live_user_put(&user);
        for id in &evicted {
            SecurityEvent::new(EventKind::SessionRevoked, Severity::Info, client)
                .actor(&user.id)
                .target(id)
                .detail("reason", "session limit")
                .record(&self.audit)
                .await;
        }
        self.issue(&user, &session, refresh, now)
    }

    fn issue(
        &self,
        user: &UserRecord,
        session: &SessionRecord,
        refresh: Zeroizing<String>,
        now: i64,
    ) -> Result<IssuedSession, AuthError> {
        let claims = self.keys.claims(&user.id, &session.id, user.role.as_str(), now);
        let access = self.keys.sign(&claims).map_err(|e| AuthError::Internal(e.to_string()))?;
        Ok(IssuedSession {
            session_id: session.id.clone(),
            user: UserView::from(user),
            access_token: access,
            refresh_token: refresh,
            expires_in: self.cfg.access_ttl_secs,
            refresh_expires_in: (session.idle_expires_at - now).max(0),
        })
    }

    /// Rotates a refresh token. A token that was already rotated revokes its whole session
    /// (unless presented again within the race grace period). `expected_session`, when given,
    /// must be the token's session (cookie flow).
    pub async fn refresh(
        &self,
        token: &str,
        expected_session: Option<&str>,
        client: &ClientInfo,
    ) -> Result<IssuedSession, AuthError> {
        if token.is_empty()
            || token.len() > 128
            || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(AuthError::Unauthorized);
        }
        let hash = sha256_hex(token);
        let now = now();
        let new_refresh = Zeroizing::new(crate::crypto::random_token::<32>());
        let new_hash = sha256_hex(&new_refresh);
        let expected = expected_session.map(str::to_string);
        let (idle, grace) = (self.cfg.refresh_idle_secs, self.cfg.refresh_reuse_grace_secs);
        let outcome = self
            .store
            .write(move |txn| {
                let Some(rec) = get_json::<RefreshRecord>(txn, tables::REFRESH_TOKENS, &hash)? else {
                    return Ok(RefreshOutcome::Refused);
                };
                if expected.as_deref().is_some_and(|e| e != rec.session_id) {
                    return Ok(RefreshOutcome::Refused);
                }
                let Some(mut session) = get_json::<SessionRecord>(txn, tables::SESSIONS, &rec.session_id)? else {
                    return Ok(RefreshOutcome::Refused);
                };
                if !session.is_live(now) {
                    return Ok(RefreshOutcome::Refused);
                }
                if let Some(rotated) = rec.rotated_at {
                    if now - rotated < grace {
                        return Ok(RefreshOutcome::Raced);
                    }
                    end_session(txn, &mut session, now)?;
                    return Ok(RefreshOutcome::Reused { session_id: session.id, user_id: session.user_id });
                }
                if now >= session.idle_expires_at {
                    return Ok(RefreshOutcome::Refused);
                }
                let Some(user) = get_json::<UserRecord>(txn, tables::USERS, &session.user_id)? else {
                    return Ok(RefreshOutcome::Refused);
                };
                if user.disabled {
                    return Ok(RefreshOutcome::Refused);
                }
                put_json(
                    txn,
                    tables::REFRESH_TOKENS,
                    &hash,
                    &RefreshRecord { session_id: session.id.clone(), rotated_at: Some(now) },
                )?;
                insert_refresh(txn, &session.id, &new_hash)?;
                session.refresh_hash = new_hash.clone();
                session.last_used_at = now;
                session.used_seq = crate::clock::use_seq();
                session.idle_expires_at = (now + idle).min(session.expires_at);
                put_json(txn, tables::SESSIONS, &session.id, &session)?;
                Ok(RefreshOutcome::Rotated { session: Box::new(session), user: Box::new(user) })
            })
            .await?;
        match outcome {
            RefreshOutcome::Rotated { session, user } => {
                metrics::counter!("auth_refresh_total", "result" => "success").increment(1);
                SecurityEvent::new(EventKind::TokenRefreshed, Severity::Info, client)
                    .actor(&user.id)
                    .target(&session.id)
                    .record(&self.audit)
                    .await;
                self.issue(&user, &session, new_refresh, now)
            }
            RefreshOutcome::Raced => {
                metrics::counter!("auth_refresh_total", "result" => "raced").increment(1);
                SecurityEvent::new(EventKind::RefreshRaced, Severity::Warning, client)
                    .detail("reason", "rotated token presented again within the grace period")
                    .record(&self.audit)
                    .await;
                Err(AuthError::Unauthorized)
            }
            RefreshOutcome::Reused { session_id, user_id } => {
                metrics::counter!("auth_refresh_total", "result" => "reuse").increment(1);
                self.live_sessions_remove(std::slice::from_ref(&session_id));
                SecurityEvent::new(EventKind::RefreshReuseDetected, Severity::Critical, client)
                    .actor(&user_id)
                    .target(&session_id)
                    .detail("action", "session revoked")
                    .record(&self.audit)
                    .await;
                Err(AuthError::Unauthorized)
            }
            RefreshOutcome::Refused => Err(AuthError::Unauthorized),
        }
    }

    /// Resolves a refresh token to its live session id, without rotating it (for listing
    /// the sessions a browser holds).
    pub fn refresh_token_session(&self, token: &str) -> Option<(String, UserView)> {
        if token.is_empty() || token.len() > 128 {
            return None;
        }
        let hash = sha256_hex(token);
        let now = now();
        self.store
            .read(|txn| {
                let rt = txn.open_table(tables::REFRESH_TOKENS)?;
                let Some(v) = rt.get(hash.as_str())? else { return Ok(None) };
                let rec: RefreshRecord = serde_json::from_slice(v.value())?;
                if rec.rotated_at.is_some() {
                    return Ok(None);
                }
                let sessions = txn.open_table(tables::SESSIONS)?;
                let Some(v) = sessions.get(rec.session_id.as_str())? else { return Ok(None) };
                let s: SessionRecord = serde_json::from_slice(v.value())?;
                if !s.is_live(now) || now >= s.idle_expires_at {
                    return Ok(None);
                }
                let users = txn.open_table(tables::USERS)?;
                let Some(v) = users.get(s.user_id.as_str())? else { return Ok(None) };
                let u: UserRecord = serde_json::from_slice(v.value())?;
                if u.disabled {
                    return Ok(None);
                }
                Ok(Some((s.id, UserView::from(&u))))
            })
            .ok()
            .flatten()
    }

    /// Checks an access token and that its session and user are still live. The role is
    /// the store's, from the in-memory view.
    pub fn authenticate(&self, access_token: &str, expected_session: Option<&str>) -> Result<Principal, AuthError> {
        let claims = self.keys.verify(access_token).map_err(|_| AuthError::Unauthorized)?;
        if expected_session.is_some_and(|s| s != claims.sid) {
            return Err(AuthError::Unauthorized);
        }
        let live = self.live.read().map_err(|_| AuthError::Unauthorized)?;
        let session = live.sessions.get(&claims.sid).ok_or(AuthError::Unauthorized)?;
        if session.user_id != claims.sub || session.expires_at <= now() {
            return Err(AuthError::Unauthorized);
        }
        let user = live.users.get(&claims.sub).ok_or(AuthError::Unauthorized)?;
        if user.disabled {
            return Err(AuthError::Unauthorized);
        }
        Ok(Principal {
            user_id: claims.sub,
            session_id: claims.sid,
            role: user.role,
            email: user.email.clone(),
            display_name: user.display_name.clone(),
        })
    }

    /// A signed stream key for `prefix`, valid `ttl` seconds, bound to the caller's session.
    pub fn sign_stream_key(&self, principal: &Principal, prefix: &str, ttl: i64) -> (String, i64) {
        let expires_at = now() + ttl;
        (self.stream_keys.sign(&principal.user_id, &principal.session_id, prefix, expires_at), expires_at)
    }

    /// Authenticates a request for `path` by a stream key: tag, expiry, prefix, and the
    /// session's live state (no store read).
    pub fn authenticate_stream_key(&self, token: &str, path: &str) -> Result<Principal, AuthError> {
        let claims = super::stream_keys::StreamKeys::parse(token).ok_or(AuthError::Unauthorized)?;
        let live = self.live.read().map_err(|_| AuthError::Unauthorized)?;
        let session = live.sessions.get(&claims.session_id).ok_or(AuthError::Unauthorized)?;
        let now = now();
        if session.expires_at <= now {
            return Err(AuthError::Unauthorized);
        }
        let user = live.users.get(&session.user_id).ok_or(AuthError::Unauthorized)?;
        if user.disabled {
            return Err(AuthError::Unauthorized);
        }
        self.stream_keys.verify(token, &session.user_id, path, now).ok_or(AuthError::Unauthorized)?;
        Ok(Principal {
            user_id: session.user_id.clone(),
            session_id: claims.session_id,
            role: user.role,
            email: user.email.clone(),
            display_name: user.display_name.clone(),
        })
    }

    /// Ends one session. Idempotent: an unknown or ended session is fine.
    pub async fn logout(&self, session_id: &str, client: &ClientInfo) -> Result<(), AuthError> {
        if !is_session_id(session_id) {
            return Ok(());
        }
        let sid = session_id.to_string();
        let now = now();
        let user = self
            .store
            .write(move |txn| {
                let Some(mut s) = get_json::<SessionRecord>(txn, tables::SESSIONS, &sid)? else { return Ok(None) };
                let was_live = s.is_live(now);
                end_session(txn, &mut s, now)?;
                Ok(was_live.then_some(s.user_id))
            })
            .await?;
        self.live_sessions_remove(&[session_id.to_string()]);
        if let Some(user) = user {
            SecurityEvent::new(EventKind::Logout, Severity::Info, client)
                .actor(user)
                .target(session_id)
                .record(&self.audit)
                .await;
        }
        Ok(())
    }

    /// Revokes a session of `owner` (or any user's when `owner` is None). Returns whether it existed.
    pub async fn revoke_session(
        &self,
        session_id: &str,
        owner: Option<&str>,
        actor: &str,
        client: &ClientInfo,
    ) -> Result<bool, AuthError> {
        if !is_session_id(session_id) {
            return Ok(false);
        }
        let sid = session_id.to_string();
        let owner = owner.map(str::to_string);
        let now = now();
        let found = self
            .store
            .write(move |txn| {
                let Some(mut s) = get_json::<SessionRecord>(txn, tables::SESSIONS, &sid)? else { return Ok(false) };
                if owner.as_deref().is_some_and(|o| o != s.user_id) || !s.is_live(now) {
                    return Ok(false);
                }
                end_session(txn, &mut s, now)?;
                Ok(true)
            })
            .await?;
        if found {
            self.live_sessions_remove(&[session_id.to_string()]);
            SecurityEvent::new(EventKind::SessionRevoked, Severity::Info, client)
                .actor(actor)
                .target(session_id)
                .record(&self.audit)
                .await;
        }
        Ok(found)
    }

    /// Ends every session of a user except `keep`. Returns how many ended.
    pub async fn revoke_user_sessions(
        &self,
        user_id: &str,
        keep: Option<&str>,
        actor: &str,
        client: &ClientInfo,
    ) -> Result<usize, AuthError> {
        let uid = user_id.to_string();
        let keep = keep.map(str::to_string);
        let now = now();
        let ended = self.store.write(move |txn| end_user_sessions(txn, &uid, keep.as_deref(), now)).await?;
        self.live_sessions_remove(&ended);
        if !ended.is_empty() {
            SecurityEvent::new(EventKind::SessionRevoked, Severity::Info, client)
                .actor(actor)
                .target(user_id)
                .detail("count", ended.len().to_string())
                .record(&self.audit)
                .await;
        }
        Ok(ended.len())
    }

    /// The live sessions of a user, newest first.
    pub fn list_sessions(&self, user_id: &str) -> Result<Vec<SessionRecord>, AuthError> {
        let now = now();
        let mut out = self.store.read(|txn| {
            let idx = txn.open_table(tables::USER_SESSIONS)?;
            let sessions = txn.open_table(tables::SESSIONS)?;
            let lo = format!("{user_id}/");
            let hi = format!("{user_id}0");
            let mut out = Vec::new();
            for row in idx.range(lo.as_str()..hi.as_str())? {
                let (k, _) = row?;
                let Some((_, sid)) = k.value().split_once('/').map(|(a, b)| (a.to_string(), b.to_string())) else {
                    continue;
                };
                if let Some(v) = sessions.get(sid.as_str())? {
                    let s: SessionRecord = serde_json::from_slice(v.value())?;
                    if s.is_live(now) && now < s.idle_expires_at {
                        out.push(s);
                    }
                }
            }
            Ok(out)
        })?;
        out.sort_by_key(|s| std::cmp::Reverse(s.last_used_at));
        Ok(out)
    }

    /// Changes the caller's password after checking the current one; ends every other
    /// session. Returns how many sessions ended.
    pub async fn change_password(
        &self,
        principal: &Principal,
        current: Zeroizing<String>,
        new: Zeroizing<String>,
        client: &ClientInfo,
    ) -> Result<usize, AuthError> {
        let user = self.read_user(&principal.user_id)?.ok_or(AuthError::Unauthorized)?;
        // Guessing the current password spends the account's sign-in budget.
        let mut attempt = match self.lockout.reserve(&user.email, now()) {
            Ok(attempt) => attempt,
            Err(secs) => {
                self.refused_locked(&user.email, Some(&user), client).await;
                return Err(AuthError::Locked(secs));
            }
        };
        attempt.checking();
        if !self.hasher.verify(Some(user.password_hash.clone()), current).await? {
            let outcome = attempt.failed(now());
            login_metric("failure");
            if let FailureOutcome::Locked(_) = outcome {
                metrics::counter!("account_lockouts_total").increment(1);
            }
            SecurityEvent::new(EventKind::LoginFailed, Severity::Warning, client)
                .actor(&user.id)
                .target(&user.email)
                .detail("reason", "wrong current password on password change")
                .record(&self.audit)
                .await;
            if let FailureOutcome::Locked(secs) = outcome {
                SecurityEvent::new(EventKind::AccountLocked, Severity::Warning, client)
                    .actor(&user.id)
                    .target(&user.email)
                    .detail("seconds", secs.to_string())
                    .detail("user", &user.id)
                    .record(&self.audit)
                    .await;
            }
            return Err(AuthError::InvalidCredentials);
        }
        attempt.succeeded(now());
        self.validate_new_password(&new, &user.email)?;
        let ended = self.set_password(&user.id, new, Some(&principal.session_id)).await?;
        SecurityEvent::new(EventKind::PasswordChanged, Severity::Info, client)
            .actor(&user.id)
            .target(&user.id)
            .detail("sessions_revoked", ended.to_string())
            .record(&self.audit)
            .await;
        Ok(ended)
    }

    async fn set_password(
        &self,
        user_id: &str,
        new: Zeroizing<String>,
        keep: Option<&str>,
    ) -> Result<usize, AuthError> {
        let hash = self.hasher.hash(new).await?;
        let uid = user_id.to_string();
        let keep = keep.map(str::to_string);
        let now = now();
        let ended = self
            .store
            .write(move |txn| {
                let Some(mut u) = get_json::<UserRecord>(txn, tables::USERS, &uid)? else { return Ok(None) };
                u.password_hash = hash.clone();
                u.updated_at = now;
                put_json(txn, tables::USERS, &uid, &u)?;
                Ok(Some(end_user_sessions(txn, &uid, keep.as_deref(), now)?))
            })
            .await?
            .ok_or(AuthError::NotFound)?;
        self.live_sessions_remove(&ended);
        Ok(ended.len())
    }

    // ---- administration ----

    /// Every user, oldest first.
    pub fn list_users(&self) -> Result<Vec<UserView>, AuthError> {
        let mut users = self.store.read(|txn| {
            let t = txn.open_table(tables::USERS)?;
            let mut out = Vec::new();
            for row in t.iter()? {
                let (_, v) = row?;
                let u: UserRecord = serde_json::from_slice(v.value())?;
                out.push(UserView::from(&u));
            }
            Ok(out)
        })?;
        users.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.email.cmp(&b.email)));
        Ok(users)
    }

    /// One user.
    pub fn get_user(&self, id: &str) -> Result<UserView, AuthError> {
        self.read_user(id)?.map(|u| UserView::from(&u)).ok_or(AuthError::NotFound)
    }

    /// Creates a user (admin action).
    pub async fn create_user(
        &self,
        actor: &Principal,
        email: &str,
        password: Zeroizing<String>,
        display_name: Option<String>,
        role: Role,
        client: &ClientInfo,
    ) -> Result<UserView, AuthError> {
        let email = normalize_email(email).map_err(|e| AuthError::Invalid(e.into()))?;
        if display_name.as_deref().is_some_and(|d| d.chars().count() > 100) {
            return Err(AuthError::Invalid("The display name must have at most 100 characters.".into()));
        }
        self.validate_new_password(&password, &email)?;
        let user = self.insert_user(&email, display_name, role, password, false).await?;
        SecurityEvent::new(EventKind::UserCreated, Severity::Info, client)
            .actor(&actor.user_id)
            .target(&user.id)
            .detail("role", role.as_str())
            .record(&self.audit)
            .await;
        Ok(user)
    }

    /// Changes display name, role or disabled; takes effect on the user's next request.
    /// The last enabled admin cannot be demoted or disabled.
    pub async fn update_user(
        &self,
        actor: &Principal,
        id: &str,
        patch: UserPatch,
        client: &ClientInfo,
    ) -> Result<UserView, AuthError> {
        if let Some(d) = &patch.display_name
            && (d.trim().is_empty() || d.chars().count() > 100)
        {
            return Err(AuthError::Invalid("The display name must have between 1 and 100 characters.".into()));
        }
        let uid = id.to_string();
        let p = patch.clone();
        let now = now();
        let result = self
            .store
            .write(move |txn| {
                let Some(mut u) = get_json::<UserRecord>(txn, tables::USERS, &uid)? else {
                    return Ok(Err(AuthError::NotFound));
                };
                let before = u.clone();
                let loses_admin = u.role == Role::Admin
                    && !u.disabled
                    && (p.role.is_some_and(|r| r != Role::Admin) || p.disabled == Some(true));
                if loses_admin && count_enabled_admins(txn)? <= 1 {
                    return Ok(Err(AuthError::Conflict("The last admin cannot be demoted or disabled.".into())));
                }
                if let Some(d) = &p.display_name {
                    u.display_name = d.trim().to_string();
                }
                if let Some(r) = p.role {
                    u.role = r;
                }
                if let Some(d) = p.disabled {
                    u.disabled = d;
                }
                u.updated_at = now;
                put_json(txn, tables::USERS, &uid, &u)?;
                let ended =
                    if u.disabled && !before.disabled { end_user_sessions(txn, &uid, None, now)? } else { Vec::new() };
                Ok(Ok((before, u, ended)))
            })
            .await?;
        let (before, after, ended) = result?;
        self.live_user_put(&after);
        self.live_sessions_remove(&ended);
        let ev = |kind| SecurityEvent::new(kind, Severity::Info, client).actor(&actor.user_id).target(&after.id);
        if before.role != after.role {
            ev(EventKind::RoleChanged)
                .detail("from", before.role.as_str())
                .detail("to", after.role.as_str())
                .record(&self.audit)
                .await;
        }
        if before.disabled != after.disabled {
            ev(EventKind::UserDisabled).detail("disabled", after.disabled.to_string()).record(&self.audit).await;
        }
        if before.display_name != after.display_name {
            ev(EventKind::UserUpdated).detail("field", "display_name").record(&self.audit).await;
        }
        Ok(UserView::from(&after))
    }

    /// Deletes a user and their sessions. The last enabled admin cannot be deleted.
    pub async fn delete_user(&self, actor: &Principal, id: &str, client: &ClientInfo) -> Result<(), AuthError> {
        let uid = id.to_string();
        let now = now();
        let result = self
            .store
            .write(move |txn| {
                let Some(u) = get_json::<UserRecord>(txn, tables::USERS, &uid)? else {
                    return Ok(Err(AuthError::NotFound));
                };
                if u.role == Role::Admin && !u.disabled && count_enabled_admins(txn)? <= 1 {
                    return Ok(Err(AuthError::Conflict("The last admin cannot be deleted.".into())));
                }
                let ended = end_user_sessions(txn, &uid, None, now)?;
                txn.open_table(tables::USERS)?.remove(uid.as_str())?;
                txn.open_table(tables::USER_EMAILS)?.remove(u.email.as_str())?;
                Ok(Ok(ended))
            })
            .await?;
        let ended = result?;
        self.live_sessions_remove(&ended);
        if let Ok(mut live) = self.live.write() {
            live.users.remove(id);
        }
        SecurityEvent::new(EventKind::UserDeleted, Severity::Info, client)
            .actor(&actor.user_id)
            .target(id)
            .record(&self.audit)
            .await;
        Ok(())
    }

    /// Sets a new password for a user (admin action); ends all their sessions.
    pub async fn reset_password(
        &self,
        actor: &Principal,
        id: &str,
        new: Zeroizing<String>,
        client: &ClientInfo,
    ) -> Result<usize, AuthError> {
        let user = self.read_user(id)?.ok_or(AuthError::NotFound)?;
        self.validate_new_password(&new, &user.email)?;
        let ended = self.set_password(id, new, None).await?;
        SecurityEvent::new(EventKind::PasswordReset, Severity::Info, client)
            .actor(&actor.user_id)
            .target(id)
            .detail("sessions_revoked", ended.to_string())
            .record(&self.audit)
            .await;
        Ok(ended)
    }

    /// Lifts a lockout on a user's email (admin action). Returns whether one was in force.
    pub async fn unlock_user(&self, actor: &Principal, id: &str, client: &ClientInfo) -> Result<bool, AuthError> {
        let user = self.read_user(id)?.ok_or(AuthError::NotFound)?;
        let was = self.lockout.unlock(&user.email, now());
        SecurityEvent::new(EventKind::AccountUnlocked, Severity::Info, client)
            .actor(&actor.user_id)
            .target(&user.id)
            .detail("was_locked", was.to_string())
            .record(&self.audit)
            .await;
        Ok(was)
    }

    /// The audit log.
    pub fn audit(&self) -> &crate::audit::Audit {
        &self.audit
    }

    /// Sessions currently live (for the `auth_active_sessions` gauge).
    pub fn active_sessions(&self) -> usize {
        self.live.read().map(|l| l.sessions.len()).unwrap_or(0)
    }

    /// The keyring (for key rotation tooling).
    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }
}

fn count_enabled_admins(txn: &WriteTransaction) -> Result<usize, StoreError> {
    let t = txn.open_table(tables::USERS)?;
    let mut n = 0;
    for row in t.iter()? {
        let (_, v) = row?;
        let u: UserRecord = serde_json::from_slice(v.value())?;
        if u.role == Role::Admin && !u.disabled {
            n += 1;
        }
    }
    Ok(n)
}

/// `auth_logins_total{result}`: `success`, `failure` (a wrong password or setup token) or
/// `locked` (refused while the account is locked), counted where the decision is made.
fn login_metric(result: &'static str) {
    metrics::counter!("auth_logins_total", "result" => result).increment(1);
}
