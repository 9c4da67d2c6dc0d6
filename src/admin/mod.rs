//! Admin commands against a running gate. redb admits one process at a time, so the CLI
//! sends each command over the Unix socket `<data>/admin.sock` to the gate, which runs it on
//! its own store; when no gate runs, the CLI opens the store itself and runs the very same
//! code ([`AdminCommand::apply`]).
//!
//! Wire format ([`protocol`]): one JSON [`AdminCommand`] line from the client, one JSON
//! [`Response`] line back, then `payload_bytes` raw bytes (a backup file, an audit export)
//! when the command has any.

mod error;
pub mod protocol;
pub mod socket;

use std::path::PathBuf;

pub use error::AdminError;
pub use protocol::{AdminCommand, GateStopped, Reply, Response, Secret, SessionData};

use crate::audit::ClientInfo;
use crate::auth::UserPatch;
use crate::auth::{Principal, Role, UserView};
use crate::core::Core;
use crate::crypto::MasterKey;

/// Largest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Bytes a command hands back besides its JSON: a file in the data directory, streamed to
/// the caller and then deleted.
pub enum Payload {
    TempFile(PathBuf),
}

fn cli_principal() -> Principal {
    Principal {
        user_id: "cli".into(),
        session_id: String::new(),
        role: Role::Admin,
        email: String::new(),
        display_name: "command line".into(),
    }
}

/// `value` unless it is blank.
fn required<'a>(value: &'a str, name: &'static str) -> Result<&'a str, AdminError> {
    if value.trim().is_empty() { Err(AdminError::Missing(name)) } else { Ok(value) }
}

/// A fresh file name in the data directory for a payload that is streamed, then deleted.
fn temp_path(core: &Core, what: &str, ext: &str) -> PathBuf {
    core.config.data_dir.join(format!(".{what}-{}.{ext}", hex::encode(crate::crypto::id_bytes::<6>())))
}

impl AdminCommand {
    /// Runs the command on `core`. `uid` is the caller's (for the audit trail).
    pub async fn apply(self, core: &Core, uid: u32) -> Result<(Reply, Option<Payload>), AdminError> {
        let client = ClientInfo {
            ip: "local".into(),
            user_agent: format!("miauflix-gate cli (uid {uid})"),
            request_id: hex::encode(crate::crypto::random_bytes::<8>()),
        };
        let actor = cli_principal();
        let auth = &core.auth;
        let by_email =
            |email: &str| -> Result<UserView, AdminError> { Ok(auth.user_by_email(required(email, "email")?)?) };
        let patch = async |email: &str, p: UserPatch| -> Result<Reply, AdminError> {
            let user = by_email(email)?;
            let u = auth.update_user(&actor, &user.id, p, &client).await?;
            Ok(Reply::User(u))
        };
        let reply = match self {
            AdminCommand::UserAdd { email, role, display_name, password } => {
                let pw = password.require("the password")?;
                let email = required(&email, "email")?;
                let u = auth.create_user(&actor, email, pw, display_name, role, &client).await?;
                Reply::User(u)
            }
            AdminCommand::UserList {} => Reply::Users(auth.list_users()?),
            AdminCommand::UserSetRole { email, role } => {
                patch(&email, UserPatch { role: Some(role), ..Default::default() }).await?
            }
            AdminCommand::UserDisable { email } => {
                patch(&email, UserPatch { disabled: Some(true), ..Default::default() }).await?
            }
            AdminCommand::UserEnable { email } => {
                patch(&email, UserPatch { disabled: Some(false), ..Default::default() }).await?
            }
            AdminCommand::UserResetPassword { email, password } => {
                let pw = password.require("the new password")?;
                let user = by_email(&email)?;
                let ended = auth.reset_password(&actor, &user.id, pw, &client).await?;
                Reply::PasswordReset { email: user.email, sessions_revoked: ended }
            }
            AdminCommand::UserUnlock { email } => {
                let user = by_email(&email)?;
                let was = auth.unlock_user(&actor, &user.id, &client).await?;
                Reply::Unlocked { email: user.email, was_locked: was }
            }
            AdminCommand::SessionsList { email } => {
                let user = by_email(&email)?;
                let sessions = auth.list_sessions(&user.id)?;
                Reply::Sessions(sessions.iter().map(SessionData::from).collect())
            }
            AdminCommand::SessionsRevoke { email, session } => {
                let user = by_email(&email)?;
                let n = match session {
                    Some(sid) => usize::from(auth.revoke_session(&sid, Some(&user.id), "cli", &client).await?),
                    None => auth.revoke_user_sessions(&user.id, None, "cli", &client).await?,
                };
                Reply::Revoked { email: user.email, revoked: n }
            }
            AdminCommand::KeysRotate {} => {
                let master = MasterKey::load(&core.config.master_key_path()).map_err(AdminError::MasterKey)?;
                let ttl = core.config.auth.access_ttl_secs;
                let r =
                    crate::maintenance::rotate_with(&core.store, &core.keyring, &master, ttl, auth.audit(), &client)
                        .await
                        .map_err(AdminError::Maintenance)?;
                auth.keys().reload(&core.store, &core.keyring)?;
                Reply::Rotated(r)
            }
            AdminCommand::KeysRetire { key_id } => {
                crate::maintenance::retire(&core.store, &core.keyring, key_id, auth.audit(), &client)
                    .await
                    .map_err(AdminError::Maintenance)?;
                Reply::Retired { retired: key_id, data_keys: core.keyring.key_ids() }
            }
            AdminCommand::AuditVerify {} => Reply::AuditVerified(auth.audit().verify()?),
            AdminCommand::AuditExport { since_ms, until_ms } => {
                // Streamed from a temporary file like a backup: a long log never sits in memory.
                let tmp = temp_path(core, "export", "jsonl");
                let audit = auth.audit().clone();
                let path = tmp.clone();
                let written = tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::OpenOptionsExt;
                    let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
                    let mut file = std::io::BufWriter::new(file);
                    audit.export_to(since_ms, until_ms, &mut file)
                })
                .await?;
                let n = written.map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    AdminError::Export(e)
                })?;
                return Ok((Reply::AuditExported { records: n }, Some(Payload::TempFile(tmp))));
            }
            AdminCommand::Backup {} => {
                let tmp = temp_path(core, "backup", "redb");
                let store = core.store.clone();
                let path = tmp.clone();
                let rows = tokio::task::spawn_blocking(move || store.backup_to(&path)).await?.map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    AdminError::Store(e)
                })?;
                let bytes = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
                return Ok((Reply::Backup { rows, bytes }, Some(Payload::TempFile(tmp))));
            }
            AdminCommand::VpnStatus {} => match core.vpn.as_ref().map(|v| v.snapshot()) {
                Some(s) => Reply::Vpn(Box::new(s)),
                None => Reply::VpnStopped { state: GateStopped::Stopped, reason: "the gate is not running".into() },
            },
            AdminCommand::VpnSetKey { private_key } => {
                let key = private_key.require("the private key")?;
                let message = match &core.vpn {
                    Some(v) => v.command(crate::vpn::VpnCommand::SetKey(key)).await?,
                    None => {
                        let public = crate::vpn::store_key(&core.store, &core.keyring, &key).await?;
                        format!("private key stored; public key {public}")
                    }
                };
                Reply::Message { message }
            }
            AdminCommand::SecretsSet { name, value } => {
                let value = value.require("the secret's value")?;
                Reply::Secret(core.secrets.set(&name, value.as_bytes(), "cli", &client).await?)
            }
            AdminCommand::SecretsList {} => Reply::Secrets(core.secrets.list()?),
            AdminCommand::SecretsDelete { name } => {
                if !core.secrets.delete(&name, "cli", &client).await? {
                    return Err(AdminError::NotFound(format!("no secret named {name}")));
                }
                Reply::Message { message: format!("secret {name} deleted") }
            }
            AdminCommand::VpnReconnect {} => match &core.vpn {
                Some(v) => Reply::Message { message: v.command(crate::vpn::VpnCommand::Reconnect).await? },
                None => return Err(AdminError::NotRunning),
            },
            AdminCommand::VpnDisable {} => {
                let message = match &core.vpn {
                    Some(v) => v.command(crate::vpn::VpnCommand::Disable).await?,
                    None => {
                        // The gate is stopped (or will not start): remove what a crashed gate left.
                        let removed = crate::vpn::tear_down(&core.config.vpn).await?;
                        if removed {
                            crate::audit::SecurityEvent::new(
                                crate::audit::EventKind::KillswitchReleased,
                                crate::audit::Severity::Warning,
                                &client,
                            )
                            .actor("cli")
                            .detail("reason", "vpn disable")
                            .record(auth.audit())
                            .await;
                            "kill switch and tunnel removed".to_string()
                        } else {
                            "no kill switch was installed".to_string()
                        }
                    }
                };
                Reply::Message { message }
            }
        };
        Ok((reply, None))
    }
}
