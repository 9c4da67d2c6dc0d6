//! The in-memory view of live sessions and users: what `authenticate` reads, so a request
//! costs no disk read. Every write to the auth tables updates it right after its commit,
//! so a revocation, a disabled user or a changed role apply on the very next request.
//!
//! It also keeps each session's last use: every authenticated request moves it forward in
//! memory (two atomic maxima under the read lock, no store write), and the writes that touch the
//! session anyway (the per-user cap, refresh) read and persist it, so the cap evicts the least
//! recently *used* session, not the one logged in or refreshed longest ago.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use redb::ReadableTable;

use super::model::{AuthError, Principal, Role, SessionRecord, UserRecord};
use crate::store::{Store, StoreError, tables};

#[derive(Clone)]
struct LiveUser {
    email: String,
    display_name: String,
    role: Role,
    disabled: bool,
}

impl From<&UserRecord> for LiveUser {
    fn from(u: &UserRecord) -> Self {
        LiveUser { email: u.email.clone(), display_name: u.display_name.clone(), role: u.role, disabled: u.disabled }
    }
}

struct LiveSession {
    user_id: String,
    expires_at: i64,
    /// Last use (Unix seconds) and its place in `clock::use_seq`'s order; only ever raised.
    last_used_at: AtomicI64,
    used_seq: AtomicU64,
}

impl LiveSession {
    fn new(user_id: String, expires_at: i64, last_used_at: i64, used_seq: u64) -> Self {
        LiveSession {
            user_id,
            expires_at,
            last_used_at: AtomicI64::new(last_used_at),
            used_seq: AtomicU64::new(used_seq),
        }
    }
}

/// When a session was last used: Unix seconds, and the order among uses (`clock::use_seq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct LastUse {
    pub at: i64,
    pub seq: u64,
}

#[derive(Default)]
struct LiveState {
    users: HashMap<String, LiveUser>,
    sessions: HashMap<String, LiveSession>,
}

/// Live users and sessions (a poisoned lock reads as "nobody is signed in"). Clones share the
/// view (the store's writer thread reads last uses from it inside the cap's transaction).
#[derive(Default, Clone)]
pub(super) struct Live(Arc<RwLock<LiveState>>);

impl Live {
    /// Rebuilds the view from the store: every user, and every session live at `now`.
    pub(super) fn reload(&self, store: &Store, now: i64) -> Result<(), StoreError> {
        let state = store.read(|txn| {
            let mut state = LiveState::default();
            let users = txn.open_table(tables::USERS)?;
            for row in users.iter()? {
                let (_, v) = row?;
                let u: UserRecord = serde_json::from_slice(v.value())?;
                state.users.insert(u.id.clone(), LiveUser::from(&u));
            }
            let sessions = txn.open_table(tables::SESSIONS)?;
            for row in sessions.iter()? {
                let (_, v) = row?;
                let s: SessionRecord = serde_json::from_slice(v.value())?;
                if s.is_live(now) {
                    let session = LiveSession::new(s.user_id, s.expires_at, s.last_used_at, s.used_seq);
                    state.sessions.insert(s.id, session);
                }
            }
            Ok(state)
        })?;
        if let Ok(mut live) = self.0.write() {
            *live = state;
        }
        Ok(())
    }

    /// A user was created or changed.
    pub(super) fn put_user(&self, u: &UserRecord) {
        if let Ok(mut live) = self.0.write() {
            live.users.insert(u.id.clone(), LiveUser::from(u));
        }
    }

    /// A user was deleted.
    pub(super) fn remove_user(&self, id: &str) {
        if let Ok(mut live) = self.0.write() {
            live.users.remove(id);
        }
    }

    /// Sessions were ended.
    pub(super) fn remove_sessions(&self, ids: &[String]) {
        if let Ok(mut live) = self.0.write() {
            for id in ids {
                live.sessions.remove(id);
            }
        }
    }

    /// A session was opened (used at `used`), and the sessions in `evicted` ended to make room, at once.
    pub(super) fn open_session(&self, id: &str, user_id: &str, expires_at: i64, used: LastUse, evicted: &[String]) {
        if let Ok(mut live) = self.0.write() {
            for id in evicted {
                live.sessions.remove(id);
            }
            let session = LiveSession::new(user_id.to_string(), expires_at, used.at, used.seq);
            live.sessions.insert(id.to_string(), session);
        }
    }

    /// Marks a use of a live session. Only for a request whose credentials were verified in
    /// full (signature, or stream-key tag): knowing a session id must not keep it alive.
    pub(super) fn touch(&self, session_id: &str, now: i64) {
        if let Ok(live) = self.0.read()
            && let Some(s) = live.sessions.get(session_id)
        {
            s.last_used_at.fetch_max(now, Ordering::Relaxed);
            s.used_seq.fetch_max(crate::clock::use_seq(), Ordering::Relaxed);
        }
    }

    /// The last use of a live session, as memory knows it.
    pub(super) fn last_use(&self, session_id: &str) -> Option<LastUse> {
        let live = self.0.read().ok()?;
        let s = live.sessions.get(session_id)?;
        Some(LastUse { at: s.last_used_at.load(Ordering::Relaxed), seq: s.used_seq.load(Ordering::Relaxed) })
    }

    /// Whether no admin exists yet.
    pub(super) fn no_admin(&self) -> bool {
        self.0.read().map(|l| !l.users.values().any(|u| u.role == Role::Admin)).unwrap_or(false)
    }

    /// Sessions currently live.
    pub(super) fn session_count(&self) -> usize {
        self.0.read().map(|l| l.sessions.len()).unwrap_or(0)
    }

    /// The principal of a live session at `now`, whose user exists and is enabled; when
    /// `user_id` is given (an access token's subject), the session must be that user's.
    pub(super) fn principal(&self, session_id: &str, user_id: Option<&str>, now: i64) -> Result<Principal, AuthError> {
        let live = self.0.read().map_err(|_| AuthError::Unauthorized)?;
        let session = live.sessions.get(session_id).ok_or(AuthError::Unauthorized)?;
        if user_id.is_some_and(|u| u != session.user_id) || session.expires_at <= now {
            return Err(AuthError::Unauthorized);
        }
        let user = live.users.get(&session.user_id).ok_or(AuthError::Unauthorized)?;
        if user.disabled {
            return Err(AuthError::Unauthorized);
        }
        Ok(Principal {
            user_id: session.user_id.clone(),
            session_id: session_id.to_string(),
            role: user.role,
            email: user.email.clone(),
            display_name: user.display_name.clone(),
        })
    }
}
