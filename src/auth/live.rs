//! The in-memory view of live sessions and users: what `authenticate` reads, so a request
//! costs no disk read. Every write to the auth tables updates it right after its commit,
//! so a revocation, a disabled user or a changed role apply on the very next request.

use std::collections::HashMap;
use std::sync::RwLock;

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
}

#[derive(Default)]
struct LiveState {
    users: HashMap<String, LiveUser>,
    sessions: HashMap<String, LiveSession>,
}

/// Live users and sessions (a poisoned lock reads as "nobody is signed in").
#[derive(Default)]
pub(super) struct Live(RwLock<LiveState>);

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
                    state.sessions.insert(s.id.clone(), LiveSession { user_id: s.user_id, expires_at: s.expires_at });
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

    /// A session was opened, and the sessions in `evicted` ended to make room, at once.
    pub(super) fn open_session(&self, id: &str, user_id: &str, expires_at: i64, evicted: &[String]) {
        if let Ok(mut live) = self.0.write() {
            for id in evicted {
                live.sessions.remove(id);
            }
            live.sessions.insert(id.to_string(), LiveSession { user_id: user_id.to_string(), expires_at });
        }
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
