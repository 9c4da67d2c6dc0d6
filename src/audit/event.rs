//! Security events. Every security-relevant action makes one `SecurityEvent`, which the
//! audit log ([`crate::audit::Audit`]) commits to its hash chain and mirrors to the
//! structured log under the `security` target.

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
    PermissionDenied,
    ConfigChanged,
    VpnUp,
    VpnDown,
    VpnReconnecting,
    VpnServerRotated,
    KillswitchEngaged,
    KillswitchReleased,
    CertificateIssued,
    CertificateRenewed,
    CertificateRenewalFailed,
    CertificateExpiring,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: &'static [EventKind] = &[
        EventKind::SetupCompleted,
        EventKind::LoginSucceeded,
        EventKind::LoginFailed,
        EventKind::Logout,
        EventKind::TokenRefreshed,
        EventKind::RefreshRaced,
        EventKind::RefreshReuseDetected,
        EventKind::PasswordChanged,
        EventKind::PasswordReset,
        EventKind::UserCreated,
        EventKind::UserUpdated,
        EventKind::UserDeleted,
        EventKind::UserDisabled,
        EventKind::RoleChanged,
        EventKind::SessionRevoked,
        EventKind::KeysRotated,
        EventKind::AccountLocked,
        EventKind::AccountUnlocked,
        EventKind::RateLimited,
        EventKind::CsrfRejected,
        EventKind::PermissionDenied,
        EventKind::ConfigChanged,
        EventKind::VpnUp,
        EventKind::VpnDown,
        EventKind::VpnReconnecting,
        EventKind::VpnServerRotated,
        EventKind::KillswitchEngaged,
        EventKind::KillswitchReleased,
        EventKind::CertificateIssued,
        EventKind::CertificateRenewed,
        EventKind::CertificateRenewalFailed,
        EventKind::CertificateExpiring,
    ];

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
            EventKind::PermissionDenied => "permission_denied",
            EventKind::ConfigChanged => "config_changed",
            EventKind::VpnUp => "vpn_up",
            EventKind::VpnDown => "vpn_down",
            EventKind::VpnReconnecting => "vpn_reconnecting",
            EventKind::VpnServerRotated => "vpn_server_rotated",
            EventKind::KillswitchEngaged => "killswitch_engaged",
            EventKind::KillswitchReleased => "killswitch_released",
            EventKind::CertificateIssued => "certificate_issued",
            EventKind::CertificateRenewed => "certificate_renewed",
            EventKind::CertificateRenewalFailed => "certificate_renewal_failed",
            EventKind::CertificateExpiring => "certificate_expiring",
        }
    }

    /// The kind named `s` (as in the audit log).
    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.iter().copied().find(|k| k.as_str() == s)
    }
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        [Severity::Info, Severity::Warning, Severity::Critical].into_iter().find(|v| v.as_str() == s)
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

    /// For an aggregated refusal: how many of the key's previous window were counted and not
    /// recorded (detail `suppressed`, left out when none were).
    pub fn suppressed(self, n: u64) -> Self {
        if n > 0 { self.detail("suppressed", n.to_string()) } else { self }
    }

    /// Commits the event to the audit log (before the caller answers its request).
    pub async fn record(self, audit: &crate::audit::Audit) {
        audit.record(self).await;
    }

    /// Mirrors the event to the structured log. Every value is a plain string field, which
    /// the text format writes quoted and escaped (Debug) and the JSON format as a JSON
    /// string, so client text (user agent, email, detail) can neither forge a field nor
    /// start a line.
    pub fn log(&self) {
        let detail = self.detail.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
        let detail = detail.as_str();
        let ua = sanitize(&self.client.user_agent, 200);
        let user_agent = ua.as_str();
        let actor = self.actor.as_deref().unwrap_or("anonymous");
        let target = self.target.as_deref().unwrap_or("-");
        let kind = self.kind.as_str();
        let ip = self.client.ip.as_str();
        let rid = self.client.request_id.as_str();
        match self.severity {
            Severity::Info => {
                tracing::info!(target: "security", event = kind, actor, target, ip, user_agent, request_id = rid, detail, "security event")
            }
            Severity::Warning => {
                tracing::warn!(target: "security", event = kind, actor, target, ip, user_agent, request_id = rid, detail, "security event")
            }
            Severity::Critical => {
                tracing::error!(target: "security", event = kind, severity = "critical", actor, target, ip, user_agent, request_id = rid, detail, "security event")
            }
        }
    }
}
