//! The admin protocol: what the CLI asks ([`AdminCommand`], tagged by `cmd`) and what the gate
//! answers ([`Response`], carrying a typed [`Reply`]). Both ends are this binary; the CLI
//! builds commands from its subcommands, the gate reads them with [`AdminCommand::from_line`]
//! and runs them with [`AdminCommand::apply`](super::AdminCommand::apply).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::audit::VerifyReport;
use crate::auth::{Role, SessionRecord, UserView};
use crate::maintenance::RotationReport;
use crate::vpn::VpnSnapshot;

/// A password or private key read from the CLI's standard input: a field of its own, never
/// an argument; zeroized on drop; `Debug` does not show it.
#[derive(Clone, Default)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(Zeroizing::new(value))
    }

    /// The value, or "`what` must be given on standard input" when it is empty.
    pub fn require(self, what: &'static str) -> Result<Zeroizing<String>, super::AdminError> {
        if self.0.is_empty() { Err(super::AdminError::NoSecret(what)) } else { Ok(self.0) }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

fn default_role() -> Role {
    Role::User
}

/// One admin command: one JSON line such as `{"cmd":"user.set-role","email":…,"role":"guest"}`.
/// Commands without fields are empty struct variants so that they, too, refuse unknown fields.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", deny_unknown_fields)]
pub enum AdminCommand {
    #[serde(rename = "user.add")]
    UserAdd {
        email: String,
        #[serde(default = "default_role")]
        role: Role,
        #[serde(default)]
        display_name: Option<String>,
        password: Secret,
    },
    #[serde(rename = "user.list")]
    UserList {},
    #[serde(rename = "user.set-role")]
    UserSetRole { email: String, role: Role },
    #[serde(rename = "user.disable")]
    UserDisable { email: String },
    #[serde(rename = "user.enable")]
    UserEnable { email: String },
    #[serde(rename = "user.reset-password")]
    UserResetPassword { email: String, password: Secret },
    #[serde(rename = "user.unlock")]
    UserUnlock { email: String },
    #[serde(rename = "sessions.list")]
    SessionsList { email: String },
    /// One session (`session`), or all of the user's.
    #[serde(rename = "sessions.revoke")]
    SessionsRevoke {
        email: String,
        #[serde(default)]
        session: Option<String>,
    },
    #[serde(rename = "keys.rotate")]
    KeysRotate {},
    #[serde(rename = "keys.retire")]
    KeysRetire { key_id: u32 },
    #[serde(rename = "audit.verify")]
    AuditVerify {},
    /// Records in `[since_ms, until_ms]` (Unix milliseconds), streamed as the payload.
    #[serde(rename = "audit.export")]
    AuditExport {
        #[serde(default)]
        since_ms: Option<i64>,
        #[serde(default)]
        until_ms: Option<i64>,
    },
    /// A snapshot of the data file, streamed as the payload.
    #[serde(rename = "backup")]
    Backup {},
    #[serde(rename = "vpn.status")]
    VpnStatus {},
    #[serde(rename = "vpn.set-key")]
    VpnSetKey { private_key: Secret },
    #[serde(rename = "vpn.reconnect")]
    VpnReconnect {},
    #[serde(rename = "vpn.disable")]
    VpnDisable {},
    #[serde(rename = "secrets.set")]
    SecretsSet { name: String, value: Secret },
    #[serde(rename = "secrets.list")]
    SecretsList {},
    #[serde(rename = "secrets.delete")]
    SecretsDelete { name: String },
}

/// Every `cmd` [`AdminCommand`] knows (the test below keeps it in step with the enum).
pub const COMMANDS: &[&str] = &[
    "user.add",
    "user.list",
    "user.set-role",
    "user.disable",
    "user.enable",
    "user.reset-password",
    "user.unlock",
    "sessions.list",
    "sessions.revoke",
    "keys.rotate",
    "keys.retire",
    "audit.verify",
    "audit.export",
    "backup",
    "vpn.status",
    "vpn.set-key",
    "vpn.reconnect",
    "vpn.disable",
    "secrets.set",
    "secrets.list",
    "secrets.delete",
];

/// At most this many characters of a parser's message (or an unknown command's name) go
/// back to the caller.
const MAX_ERROR_CHARS: usize = 300;

/// A parser message as one printable line of bounded length.
fn one_line(msg: &str) -> String {
    msg.chars().take(MAX_ERROR_CHARS).map(|c| if c.is_control() { ' ' } else { c }).collect()
}

impl AdminCommand {
    /// Reads one request line. Anything else is refused with one line: `malformed request: …`
    /// (not a JSON object with a `cmd`), `unknown command "…"`, or `bad <cmd> request: …` (a
    /// missing, unknown or mistyped field). The messages never hold a secret's value: a
    /// secret field accepts any string.
    pub fn from_line(line: &[u8]) -> Result<AdminCommand, String> {
        serde_json::from_slice(line).map_err(|e| {
            #[derive(Deserialize)]
            struct Tag {
                cmd: String,
            }
            match serde_json::from_slice::<Tag>(line) {
                Ok(Tag { cmd }) if !COMMANDS.contains(&cmd.as_str()) => {
                    format!("unknown command {:?}", one_line(&cmd).chars().take(64).collect::<String>())
                }
                Ok(Tag { cmd }) => format!("bad {cmd} request: {}", one_line(&e.to_string())),
                Err(_) => format!("malformed request: {}", one_line(&e.to_string())),
            }
        })
    }
}

/// A live session as `sessions list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionData {
    pub id: String,
    pub created_at: i64,
    pub last_used_at: i64,
    pub expires_at: i64,
    pub ip: String,
}

impl From<&SessionRecord> for SessionData {
    fn from(s: &SessionRecord) -> SessionData {
        SessionData {
            id: s.id.clone(),
            created_at: s.created_at,
            last_used_at: s.last_used_at,
            expires_at: s.expires_at,
            ip: s.ip.clone(),
        }
    }
}

/// The `state` of `vpn status` when no gate runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GateStopped {
    Stopped,
}

/// What a command answers. `data` (see [`Reply::data`]) is what `--json` prints.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "kebab-case", rename_all_fields = "camelCase")]
pub enum Reply {
    /// `user list`.
    Users(Vec<UserView>),
    /// `user add`, `set-role`, `disable`, `enable`: the user as it is now.
    User(UserView),
    PasswordReset {
        email: String,
        sessions_revoked: usize,
    },
    Unlocked {
        email: String,
        was_locked: bool,
    },
    Sessions(Vec<SessionData>),
    Revoked {
        email: String,
        revoked: usize,
    },
    Rotated(RotationReport),
    Retired {
        retired: u32,
        data_keys: Vec<u32>,
    },
    AuditVerified(VerifyReport),
    AuditExported {
        records: u64,
    },
    Backup {
        rows: u64,
        bytes: u64,
    },
    Vpn(Box<VpnSnapshot>),
    VpnStopped {
        state: GateStopped,
        reason: String,
    },
    /// A one-line summary (`vpn set-key`, `reconnect`, `disable`, `secrets delete`).
    Message {
        message: String,
    },
    /// `secrets set`: the secret as listed (never its value).
    Secret(crate::secrets::SecretInfo),
    /// `secrets list`.
    Secrets(Vec<crate::secrets::SecretInfo>),
}

impl Reply {
    /// The reply's data as JSON, without the `kind` tag (what `--json` prints).
    pub fn data(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["data"].take()
    }
}

/// The answer line: a reply followed by `payload_bytes` raw bytes (a backup file, an audit
/// export), or one line of error.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok {
        reply: Reply,
        #[serde(default)]
        payload_bytes: u64,
    },
    Error(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_command() -> Vec<AdminCommand> {
        let email = || "a@example.com".to_string();
        let secret = || Secret::new("pw".into());
        vec![
            AdminCommand::UserAdd { email: email(), role: Role::Admin, display_name: None, password: secret() },
            AdminCommand::UserList {},
            AdminCommand::UserSetRole { email: email(), role: Role::Guest },
            AdminCommand::UserDisable { email: email() },
            AdminCommand::UserEnable { email: email() },
            AdminCommand::UserResetPassword { email: email(), password: secret() },
            AdminCommand::UserUnlock { email: email() },
            AdminCommand::SessionsList { email: email() },
            AdminCommand::SessionsRevoke { email: email(), session: Some("s".into()) },
            AdminCommand::KeysRotate {},
            AdminCommand::KeysRetire { key_id: 3 },
            AdminCommand::AuditVerify {},
            AdminCommand::AuditExport { since_ms: Some(1), until_ms: None },
            AdminCommand::Backup {},
            AdminCommand::VpnStatus {},
            AdminCommand::VpnSetKey { private_key: secret() },
            AdminCommand::VpnReconnect {},
            AdminCommand::VpnDisable {},
            AdminCommand::SecretsSet { name: "proxy".into(), value: secret() },
            AdminCommand::SecretsList {},
            AdminCommand::SecretsDelete { name: "proxy".into() },
        ]
    }

    #[test]
    fn every_command_is_listed_and_reads_back_from_its_line() {
        let all = every_command();
        assert_eq!(all.len(), COMMANDS.len());
        for (cmd, name) in all.iter().zip(COMMANDS) {
            let line = serde_json::to_string(cmd).unwrap();
            assert_eq!(serde_json::from_str::<Value>(&line).unwrap()["cmd"], *name, "{line}");
            let again = AdminCommand::from_line(line.as_bytes()).unwrap();
            assert_eq!(serde_json::to_string(&again).unwrap(), line);
        }
    }

    #[test]
    fn bad_lines_get_one_clear_line() {
        let err = |line: &str| AdminCommand::from_line(line.as_bytes()).unwrap_err();
        assert_eq!(err(r#"{"cmd":"user.drop"}"#), r#"unknown command "user.drop""#);
        assert!(err("[]").starts_with("malformed request"), "{}", err("[]"));
        assert!(err(r#"{"cmd":1}"#).starts_with("malformed request"));
        let e = err(r#"{"cmd":"user.set-role","email":"a@b.c","role":"emperor"}"#);
        assert!(e.starts_with("bad user.set-role request: unknown variant `emperor`"), "{e}");
        let e = err(r#"{"cmd":"user.add","email":"a@b.c","args":{"x":"y"},"password":"pw"}"#);
        assert!(e.contains("unknown field `args`"), "{e}");
        let e = err(r#"{"cmd":"backup","args":{"out":"/tmp/x"}}"#);
        assert!(e.starts_with("bad backup request: unknown field `args`"), "{e}");
        let e = err(r#"{"cmd":"keys.retire","key_id":"one"}"#);
        assert!(e.starts_with("bad keys.retire request"), "{e}");
        let e = err(&format!("{{\"cmd\":\"{}\\n\"}}", "x".repeat(5000)));
        assert!(!e.contains('\n') && e.len() < 100, "{e}");
    }

    #[test]
    fn a_secret_is_not_in_debug_output() {
        let cmd = AdminCommand::VpnSetKey { private_key: Secret::new("hunter2-key".into()) };
        assert!(!format!("{cmd:?}").contains("hunter2"));
    }

    #[test]
    fn replies_built_from_the_domain_types_keep_their_wire_json() {
        let line = |r: Reply| serde_json::to_string(&Response::Ok { reply: r, payload_bytes: 0 }).unwrap();
        let user = UserView {
            id: "u1".into(),
            email: "a@b.c".into(),
            display_name: "a".into(),
            role: Role::Admin,
            disabled: false,
            created_at: 7,
        };
        assert_eq!(
            line(Reply::Users(vec![user])),
            r#"{"ok":{"reply":{"kind":"users","data":[{"id":"u1","email":"a@b.c","displayName":"a","role":"admin","disabled":false,"createdAt":7}]},"payload_bytes":0}}"#
        );
        let rotated = RotationReport { data_key_id: 2, signing_kid: "k".into(), reencrypted_fields: 3 };
        assert_eq!(
            line(Reply::Rotated(rotated)),
            r#"{"ok":{"reply":{"kind":"rotated","data":{"dataKey":2,"signingKid":"k","reencrypted":3}},"payload_bytes":0}}"#
        );
        let report =
            VerifyReport { ok: false, first: 1, last: 9, checked: 4, first_bad: Some(5), reason: Some("x".into()) };
        let text = line(Reply::AuditVerified(report.clone()));
        assert_eq!(
            text,
            r#"{"ok":{"reply":{"kind":"audit-verified","data":{"ok":false,"first":1,"last":9,"checked":4,"firstBad":5,"reason":"x"}},"payload_bytes":0}}"#
        );
        let Response::Ok { reply: Reply::AuditVerified(back), .. } = serde_json::from_str(&text).unwrap() else {
            panic!("{text}")
        };
        assert_eq!(back, report);
    }

    #[test]
    fn json_output_is_the_data_without_the_tag() {
        let r = Reply::PasswordReset { email: "a@b.c".into(), sessions_revoked: 2 };
        assert_eq!(r.data(), serde_json::json!({"email": "a@b.c", "sessionsRevoked": 2}));
        let r = Reply::VpnStopped { state: GateStopped::Stopped, reason: "the gate is not running".into() };
        assert_eq!(r.data(), serde_json::json!({"state": "stopped", "reason": "the gate is not running"}));
        let line = serde_json::to_string(&Response::Ok { reply: r, payload_bytes: 0 }).unwrap();
        assert!(matches!(serde_json::from_str(&line).unwrap(), Response::Ok { reply: Reply::VpnStopped { .. }, .. }));
    }
}
