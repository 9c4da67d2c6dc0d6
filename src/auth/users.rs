//! Users: the first admin by setup token, user administration (create, update, delete,
//! reset, unlock; the last admin is never demoted, disabled or deleted) and password changes.

use redb::ReadableTable;
use zeroize::Zeroizing;

use super::lockout::FailureOutcome;
use super::model::{
    AuthError, Principal, Role, UserPatch, UserRecord, UserView, default_display_name, normalize_email,
};
use super::records::{self, count_enabled_admins, end_user_sessions, get_json, new_id, put_json};
use super::service::{AuthService, login_metric};
use super::setup;
use crate::audit::{ClientInfo, EventKind, SecurityEvent, Severity};
use crate::clock::now;
use crate::store::tables;

impl AuthService {
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

    pub(super) async fn insert_user(
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
        records::write(&self.store, move |txn| {
            if txn.open_table(tables::USER_EMAILS)?.get(stored.email.as_str())?.is_some() {
                return Err(AuthError::Conflict("A user with this email already exists.".into()).into());
            }
            if only_if_no_admin {
                let users = txn.open_table(tables::USERS)?;
                for row in users.iter()? {
                    let (_, v) = row?;
                    let u: UserRecord = serde_json::from_slice(v.value())?;
                    if u.role == Role::Admin {
                        return Err(AuthError::NotFound.into());
                    }
                }
            }
            put_json(txn, tables::USERS, &stored.id, &stored)?;
            txn.open_table(tables::USER_EMAILS)?.insert(stored.email.as_str(), stored.id.as_str())?;
            Ok(())
        })
        .await?;
        self.live.put_user(&rec);
        Ok(UserView::from(&rec))
    }

    /// The user with this email (normalised), for the admin CLI.
    pub fn user_by_email(&self, email: &str) -> Result<UserView, AuthError> {
        let email = normalize_email(email).map_err(|e| AuthError::Invalid(e.into()))?;
        self.find_user_by_email(&email)?.map(|u| UserView::from(&u)).ok_or(AuthError::NotFound)
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

    pub(super) async fn set_password(
        &self,
        user_id: &str,
        new: Zeroizing<String>,
        keep: Option<&str>,
    ) -> Result<usize, AuthError> {
        let hash = self.hasher.hash(new).await?;
        let uid = user_id.to_string();
        let keep = keep.map(str::to_string);
        let now = now();
        let ended = records::write(&self.store, move |txn| {
            let Some(mut u) = get_json::<UserRecord>(txn, tables::USERS, &uid)? else { return Ok(None) };
            u.password_hash = hash.clone();
            u.updated_at = now;
            put_json(txn, tables::USERS, &uid, &u)?;
            Ok(Some(end_user_sessions(txn, &uid, keep.as_deref(), now)?))
        })
        .await?
        .ok_or(AuthError::NotFound)?;
        self.live.remove_sessions(&ended);
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
        let (before, after, ended) = records::write(&self.store, move |txn| {
            let Some(mut u) = get_json::<UserRecord>(txn, tables::USERS, &uid)? else {
                return Err(AuthError::NotFound.into());
            };
            let before = u.clone();
            let loses_admin = u.role == Role::Admin
                && !u.disabled
                && (p.role.is_some_and(|r| r != Role::Admin) || p.disabled == Some(true));
            if loses_admin && count_enabled_admins(txn)? <= 1 {
                return Err(AuthError::Conflict("The last admin cannot be demoted or disabled.".into()).into());
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
            Ok((before, u, ended))
        })
        .await?;
        self.live.put_user(&after);
        self.live.remove_sessions(&ended);
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
        let ended = records::write(&self.store, move |txn| {
            let Some(u) = get_json::<UserRecord>(txn, tables::USERS, &uid)? else {
                return Err(AuthError::NotFound.into());
            };
            if u.role == Role::Admin && !u.disabled && count_enabled_admins(txn)? <= 1 {
                return Err(AuthError::Conflict("The last admin cannot be deleted.".into()).into());
            }
            let ended = end_user_sessions(txn, &uid, None, now)?;
            txn.open_table(tables::USERS)?.remove(uid.as_str())?;
            txn.open_table(tables::USER_EMAILS)?.remove(u.email.as_str())?;
            Ok(ended)
        })
        .await?;
        self.live.remove_sessions(&ended);
        self.live.remove_user(id);
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
}
