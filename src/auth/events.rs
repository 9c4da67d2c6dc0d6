//! Security events. Every security-relevant action emits one `SecurityEvent`; until the
//! audit log exists they go to the structured log under the `security` target.

/// How serious an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    SetupCompleted,
    LoginSucceeded,
    LoginFailed,
    Logout,
    TokenRefreshed,
    RefreshRaced,
    RefreshReuseDetected,
    PasswordChanged,
    PasswordReset,
    UserCreated,
    UserUpdated,
    UserDeleted,
    UserDisabled,
    RoleChanged,
    SessionRevoked,
    KeysRotated,
    AccountLocked,
    AccountUnlocked,
    RateLimited,
    CsrfRejected,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::SetupCompleted => "setup_completed",
            EventKind::LoginSucceeded => "login_succeeded",
            EventKind::LoginFailed => "login_failed",
            EventKind::Logout => "logout",
            EventKind::TokenRefreshed => "token_refreshed",
            EventKind::RefreshRaced => "refresh_raced",
            EventKind::RefreshReuseDetected => "refresh_reuse_detected",
            EventKind::PasswordChanged => "password_changed",
            EventKind::PasswordReset => "password_reset",
            EventKind::UserCreated => "user_created",
            EventKind::UserUpdated => "user_updated",
            EventKind::UserDeleted => "user_deleted",
            EventKind::UserDisabled => "user_disabled",
            EventKind::RoleChanged => "role_changed",
            EventKind::SessionRevoked => "session_revoked",
            EventKind::KeysRotated => "keys_rotated",
            EventKind::AccountLocked => "account_locked",
            EventKind::AccountUnlocked => "account_unlocked",
            EventKind::RateLimited => "rate_limited",
            EventKind::CsrfRejected => "csrf_rejected",
        }
    }
}

/// Who asked, as far as the domain needs to know.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub ip: String,
    pub user_agent: String,
    pub request_id: String,
}

/// One security event. Never carries secrets, tokens or passwords.
#[derive(Debug, Clone)]
pub struct SecurityEvent {
    pub kind: EventKind,
    pub severity: Severity,
    pub actor: Option<String>,
    pub target: Option<String>,
    pub client: ClientInfo,
    pub detail: Vec<(&'static str, String)>,
}

/// Escapes control characters and truncates, so a crafted value cannot forge log lines.
pub fn sanitize(value: &str, max: usize) -> String {
    let mut out = String::new();
    for c in value.chars().take(max) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl SecurityEvent {
    pub fn new(kind: EventKind, severity: Severity, client: &ClientInfo) -> Self {
        SecurityEvent { kind, severity, actor: None, target: None, client: client.clone(), detail: Vec::new() }
    }

    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(sanitize(&target.into(), 128));
        self
    }

    pub fn detail(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.detail.push((key, sanitize(&value.into(), 128)));
        self
    }

    /// Records the event.
    pub fn emit(self) {
        let detail = self.detail.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
        let ua = sanitize(&self.client.user_agent, 200);
        let actor = self.actor.as_deref().unwrap_or("anonymous");
        let target = self.target.as_deref().unwrap_or("-");
        let kind = self.kind.as_str();
        let ip = self.client.ip.as_str();
        let rid = self.client.request_id.as_str();
        match self.severity {
            Severity::Info => {
                tracing::info!(target: "security", event = kind, actor, target, ip, user_agent = %ua, request_id = rid, detail = %detail, "security event")
            }
            Severity::Warning => {
                tracing::warn!(target: "security", event = kind, actor, target, ip, user_agent = %ua, request_id = rid, detail = %detail, "security event")
            }
            Severity::Critical => {
                tracing::error!(target: "security", event = kind, severity = "critical", actor, target, ip, user_agent = %ua, request_id = rid, detail = %detail, "security event")
            }
        }
    }
}
