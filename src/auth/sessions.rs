//! Sessions: login (with the lockout's reservation before the hash), opening a session under
//! the per-user cap, refresh with rotation and reuse detection, authenticating an access
//! token or a stream key against the live view, logout and revocation.

use zeroize::Zeroizing;

use super::live::LastUse;
use super::lockout::{Attempt, FailureOutcome};
use super::model::{
    AuthError, IssuedSession, Principal, RefreshRecord, SessionKind, SessionRecord, UserRecord, UserView,
    is_session_id, normalize_email,
};
use super::records::{
    end_session, end_user_sessions, forget_session, get_json, insert_refresh, owned_by, put_json, sha256_hex,
    user_session_ids,
};
use super::service::{AuthService, login_metric};
use crate::audit::{ClientInfo, EventKind, SecurityEvent, Severity};
use crate::clock::now;
use crate::store::tables;

enum RefreshOutcome {
    Rotated { session: Box<SessionRecord>, user: Box<UserRecord> },
    Raced,
    Reused { session_id: String, user_id: String },
    Refused,
}

impl AuthService {
    /// Checks email and password; unknown and disabled users cost the same and fail the same.
    pub(super) async fn check_credentials(
        &self,
        email: &str,
        password: Zeroizing<String>,
        client: &ClientInfo,
    ) -> Result<(UserRecord, String), AuthError> {
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
        // The hash the password was checked against: the session opens only if the stored
        // record still has it (a reset or change meanwhile wins over this sign-in).
        let verified = user.password_hash.clone();
        if self.hasher.needs_rehash(&user.password_hash) {
            user.password_hash = self.hasher.hash(password).await?;
            user.updated_at = now();
        }
        Ok((user, verified))
    }

    /// Records an attempt refused because the email is locked (or its budget is spent by
    /// attempts in flight): free to repeat, so once per email per window, with the count of
    /// the previous window's unrecorded refusals.
    pub(super) async fn refused_locked(&self, lock_key: &str, user: Option<&UserRecord>, client: &ClientInfo) {
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
    pub(super) async fn login_failed(
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
        let (user, verified) = self.check_credentials(email, password, client).await?;
        let issued = self.open_session(user, &verified, kind, client).await?;
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

    pub(super) async fn open_session(
        &self,
        user: UserRecord,
        verified_hash: &str,
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
        let (checked, stored_session, verified) = (user.clone(), session.clone(), verified_hash.to_string());
        let uses = self.live.clone();
        let (user, evicted): (UserRecord, Vec<(String, i64)>) = super::records::write(&self.store, move |txn| {
            // The record as it is now, not as it was before the hash: an admin may have
            // disabled the user, changed the role or reset the password meanwhile, and
            // writing back the record read before would undo that.
            let Some(mut stored_user) = get_json::<UserRecord>(txn, tables::USERS, &checked.id)? else {
                return Err(AuthError::InvalidCredentials.into());
            };
            if stored_user.disabled || stored_user.password_hash != verified {
                return Err(AuthError::InvalidCredentials.into());
            }
            if checked.password_hash != verified {
                // Rehashed with the current parameters.
                stored_user.password_hash = checked.password_hash.clone();
                stored_user.updated_at = checked.updated_at;
                put_json(txn, tables::USERS, &stored_user.id, &stored_user)?;
            }
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
            // Requests since the last write raised the last use in memory only; read it
            // here, in the transaction that decides, and persist it for the survivors.
            let mut live: Vec<(SessionRecord, bool)> = live
                .into_iter()
                .map(|mut s| {
                    let later = uses.last_use(&s.id).is_some_and(|u| s.note_use(u.at, u.seq));
                    (s, later)
                })
                .collect();
            live.sort_by_key(|(s, _)| (s.last_used_at, s.used_seq));
            // Room for the new one: at most `max - 1` stay.
            let evict = live.len().saturating_sub(max.saturating_sub(1));
            let mut evicted = Vec::new();
            for (s, later) in live.iter_mut() {
                if evicted.len() < evict {
                    forget_session(txn, s, now)?;
                    evicted.push((s.id.clone(), s.last_used_at));
                } else if *later {
                    put_json(txn, tables::SESSIONS, &s.id, s)?;
                }
            }
            put_json(txn, tables::SESSIONS, &stored_session.id, &stored_session)?;
            txn.open_table(tables::USER_SESSIONS)?
                .insert(format!("{}/{}", stored_session.user_id, stored_session.id).as_str(), ())?;
            insert_refresh(txn, &stored_session.id, &stored_session.refresh_hash)?;
            Ok((stored_user, evicted))
        })
        .await?;
        let evicted_ids: Vec<String> = evicted.iter().map(|(id, _)| id.clone()).collect();
        let used = LastUse { at: session.last_used_at, seq: session.used_seq };
        self.live.open_session(&session.id, &user.id, session.expires_at, used, &evicted_ids);
        self.live.put_user(&user);
        // Another sign-in in the same commit may have evicted this new session, and its
        // update of the live view may have run before this one: the store decides.
        let sid = session.id.clone();
        let kept = self.store.read(move |txn| Ok(txn.open_table(tables::SESSIONS)?.get(sid.as_str())?.is_some()))?;
        if !kept {
            self.live.remove_sessions(std::slice::from_ref(&session.id));
        }
        for (id, last_used_at) in &evicted {
            SecurityEvent::new(EventKind::SessionRevoked, Severity::Info, client)
                .actor(&user.id)
                .target(id)
                .detail("reason", "session limit")
                .detail("user", &user.id)
                .detail("last_used_at", last_used_at.to_string())
                .record(&self.audit)
                .await;
        }
        self.issue(&user, &session, refresh, now)
    }

    pub(super) fn issue(
        &self,
        user: &UserRecord,
        session: &SessionRecord,
        refresh: Zeroizing<String>,
        now: i64,
    ) -> Result<IssuedSession, AuthError> {
        let claims = self.keys.claims(&user.id, &session.id, user.role.as_str(), now);
        let access = self.keys.sign(&claims)?;
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
                self.live.remove_sessions(std::slice::from_ref(&session_id));
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
        let now = now();
        let principal = self.live.principal(&claims.sid, Some(&claims.sub), now)?;
        // Only now, with the signature checked and the session live, does the use count.
        self.live.touch(&claims.sid, now);
        Ok(principal)
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
        let now = now();
        let principal = self.live.principal(&claims.session_id, None, now)?;
        self.stream_keys.verify(token, &principal.user_id, path, now).ok_or(AuthError::Unauthorized)?;
        // After the tag: a forged key naming a session must not keep that session alive.
        self.live.touch(&principal.session_id, now);
        Ok(principal)
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
        self.live.remove_sessions(&[session_id.to_string()]);
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
            self.live.remove_sessions(&[session_id.to_string()]);
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
        self.live.remove_sessions(&ended);
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
            let range = owned_by(user_id);
            let mut out = Vec::new();
            for row in idx.range(range.start.as_str()..range.end.as_str())? {
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
        for s in &mut out {
            if let Some(u) = self.live.last_use(&s.id) {
                s.note_use(u.at, u.seq);
            }
        }
        out.sort_by_key(|s| std::cmp::Reverse((s.last_used_at, s.used_seq)));
        Ok(out)
    }
}
