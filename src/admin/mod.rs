//! Admin commands against a running gate. redb admits one process at a time, so the CLI
//! sends each command over the Unix socket `<data>/admin.sock` to the gate, which runs it on
//! its own store; when no gate runs, the CLI opens the store itself and runs the very same
//! code ([`execute`]).
//!
//! Wire format: one JSON [`Request`] line from the client, one JSON [`Response`] line back,
//! then `payload_bytes` raw bytes (a backup file, an audit export) when the command has any.

pub mod socket;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::audit::ClientInfo;
use crate::auth::UserPatch;
use crate::auth::{AuthError, Principal, Role, UserView};
use crate::core::Core;
use crate::crypto::MasterKey;

/// Largest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;

/// One command.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Request {
    /// `user.add`, `user.list`, `sessions.revoke`, `backup`, …
    pub cmd: String,
    #[serde(default)]
    pub args: BTreeMap<String, String>,
    /// A password read from the CLI's standard input; never in `args`, never logged.
    #[serde(default)]
    pub secret: Option<String>,
}

impl Drop for Request {
    fn drop(&mut self) {
        if let Some(s) = self.secret.as_mut() {
            zeroize::Zeroize::zeroize(s);
        }
    }
}

/// The answer: `ok` with `data`, or one line of `error`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub data: Value,
    #[serde(default)]
    pub error: Option<String>,
    /// Raw bytes that follow the response line.
    #[serde(default)]
    pub payload_bytes: u64,
}

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

fn user_json(u: &UserView) -> Value {
    json!({
        "id": u.id,
        "email": u.email,
        "displayName": u.display_name,
        "role": u.role.as_str(),
        "disabled": u.disabled,
        "createdAt": u.created_at,
    })
}

fn auth_err(e: AuthError) -> String {
    match e {
        AuthError::NotFound => "no such user".into(),
        AuthError::Invalid(m) | AuthError::Conflict(m) => m,
        AuthError::Forbidden => "not allowed".into(),
        AuthError::Internal(cause) => {
            tracing::error!(error = %cause, "admin command failed");
            "internal error; see the gate's log".into()
        }
        other => format!("{other:?}").to_lowercase(),
    }
}

fn arg<'a>(req: &'a Request, name: &str) -> Result<&'a str, String> {
    req.args
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| format!("--{name} is required"))
}

fn role_arg(req: &Request) -> Result<Role, String> {
    let r = arg(req, "role")?;
    Role::parse(r).ok_or_else(|| format!("role must be admin, user or guest, not {r:?}"))
}

fn secret(req: &Request, what: &str) -> Result<Zeroizing<String>, String> {
    match req.secret.as_deref() {
        Some(s) if !s.is_empty() => Ok(Zeroizing::new(s.to_string())),
        _ => Err(format!("{what} must be given on standard input")),
    }
}

/// A fresh file name in the data directory for a payload that is streamed, then deleted.
fn temp_path(core: &Core, what: &str, ext: &str) -> PathBuf {
    core.config.data_dir.join(format!(".{what}-{}.{ext}", hex::encode(crate::crypto::id_bytes::<6>())))
}

/// Runs one command. `uid` is the caller's (for the audit trail).
pub async fn execute(core: &Core, req: &Request, uid: u32) -> Result<(Value, Option<Payload>), String> {
    let client = ClientInfo {
        ip: "local".into(),
        user_agent: format!("miauflix-gate cli (uid {uid})"),
        request_id: hex::encode(crate::crypto::random_bytes::<8>()),
    };
    let actor = cli_principal();
    let auth = &core.auth;
    let by_email =
        |req: &Request| -> Result<UserView, String> { auth.user_by_email(arg(req, "email")?).map_err(auth_err) };
    let patch = |p: UserPatch, req: &Request| {
        let user = by_email(req);
        let client = client.clone();
        let actor = actor.clone();
        async move {
            let user = user?;
            auth.update_user(&actor, &user.id, p, &client).await.map(|u| user_json(&u)).map_err(auth_err)
        }
    };
    let out = match req.cmd.as_str() {
        "user.add" => {
            let pw = secret(req, "the password")?;
            let role = if req.args.contains_key("role") { role_arg(req)? } else { Role::User };
            let name = req.args.get("display_name").cloned();
            let u = auth.create_user(&actor, arg(req, "email")?, pw, name, role, &client).await.map_err(auth_err)?;
            user_json(&u)
        }
        "user.list" => Value::Array(auth.list_users().map_err(auth_err)?.iter().map(user_json).collect()),
        "user.set-role" => patch(UserPatch { role: Some(role_arg(req)?), ..Default::default() }, req).await?,
        "user.disable" => patch(UserPatch { disabled: Some(true), ..Default::default() }, req).await?,
        "user.enable" => patch(UserPatch { disabled: Some(false), ..Default::default() }, req).await?,
        "user.reset-password" => {
            let pw = secret(req, "the new password")?;
            let user = by_email(req)?;
            let ended = auth.reset_password(&actor, &user.id, pw, &client).await.map_err(auth_err)?;
            json!({"email": user.email, "sessionsRevoked": ended})
        }
        "user.unlock" => {
            let user = by_email(req)?;
            let was = auth.unlock_user(&actor, &user.id, &client).await.map_err(auth_err)?;
            json!({"email": user.email, "wasLocked": was})
        }
        "sessions.list" => {
            let user = by_email(req)?;
            let sessions = auth.list_sessions(&user.id).map_err(auth_err)?;
            Value::Array(
                sessions
                    .iter()
                    .map(|s| {
                        json!({"id": s.id, "createdAt": s.created_at, "lastUsedAt": s.last_used_at,
                               "expiresAt": s.expires_at, "ip": s.ip})
                    })
                    .collect(),
            )
        }
        "sessions.revoke" => {
            let user = by_email(req)?;
            let n = match req.args.get("session") {
                Some(sid) => {
                    usize::from(auth.revoke_session(sid, Some(&user.id), "cli", &client).await.map_err(auth_err)?)
                }
                None => auth.revoke_user_sessions(&user.id, None, "cli", &client).await.map_err(auth_err)?,
            };
            json!({"email": user.email, "revoked": n})
        }
        "keys.rotate" => {
            let master = MasterKey::load(&core.config.master_key_path()).map_err(|e| e.to_string())?;
            let ttl = core.config.auth.access_ttl_secs;
            let r = crate::maintenance::rotate_with(&core.store, &core.keyring, &master, ttl, auth.audit(), &client)
                .await
                .map_err(|e| format!("{e:#}"))?;
            auth.keys().reload(&core.store, &core.keyring).map_err(|e| e.to_string())?;
            json!({"dataKey": r.data_key_id, "signingKid": r.signing_kid, "reencrypted": r.reencrypted_fields})
        }
        "keys.retire" => {
            let id = arg(req, "key_id")?;
            let id: u32 = id.parse().map_err(|_| format!("--key-id must be a data key number, not {id:?}"))?;
            crate::maintenance::retire(&core.store, &core.keyring, id, auth.audit(), &client)
                .await
                .map_err(|e| format!("{e:#}"))?;
            json!({"retired": id, "dataKeys": core.keyring.key_ids()})
        }
        "audit.verify" => {
            let r = auth.audit().verify().map_err(|e| e.to_string())?;
            json!({"ok": r.ok, "first": r.first, "last": r.last, "checked": r.checked,
                   "firstBad": r.first_bad, "reason": r.reason})
        }
        "audit.export" => {
            let parse = |name: &str| -> Result<Option<i64>, String> {
                req.args
                    .get(name)
                    .map(|v| {
                        crate::audit::parse_rfc3339_ms(v)
                            .ok_or_else(|| format!("--{name} must be an RFC 3339 time such as 2026-11-29T08:00:00Z"))
                    })
                    .transpose()
            };
            let (since, until) = (parse("since")?, parse("until")?);
            // Streamed from a temporary file like a backup: a long log never sits in memory.
            let tmp = temp_path(core, "export", "jsonl");
            let audit = auth.audit().clone();
            let path = tmp.clone();
            let written = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::OpenOptionsExt;
                let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
                let mut file = std::io::BufWriter::new(file);
                audit.export_to(since, until, &mut file)
            })
            .await
            .map_err(|e| e.to_string())?;
            let n = written.map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                e.to_string()
            })?;
            return Ok((json!({"records": n}), Some(Payload::TempFile(tmp))));
        }
        "backup" => {
            let tmp = temp_path(core, "backup", "redb");
            let store = core.store.clone();
            let path = tmp.clone();
            let rows = tokio::task::spawn_blocking(move || store.backup_to(&path))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    e.to_string()
                })?;
            let bytes = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
            return Ok((json!({"rows": rows, "bytes": bytes}), Some(Payload::TempFile(tmp))));
        }
        "vpn.status" => match core.vpn.as_ref().map(|v| v.snapshot()) {
            Some(s) => serde_json::to_value(&s).map_err(|e| e.to_string())?,
            None => json!({"state": "stopped", "reason": "the gate is not running"}),
        },
        "vpn.set-key" => {
            let key = secret(req, "the private key")?;
            let msg = match &core.vpn {
                Some(v) => v.command(crate::vpn::VpnCommand::SetKey(key)).await?,
                None => {
                    let public = crate::vpn::store_key(&core.store, &core.keyring, &key).await?;
                    format!("private key stored; public key {public}")
                }
            };
            json!({"message": msg})
        }
        "vpn.reconnect" => match &core.vpn {
            Some(v) => json!({"message": v.command(crate::vpn::VpnCommand::Reconnect).await?}),
            None => return Err("the gate is not running; it connects when it starts".into()),
        },
        "vpn.disable" => {
            let msg = match &core.vpn {
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
            json!({"message": msg})
        }
        other => return Err(format!("unknown command {other:?}")),
    };
    Ok((out, None))
}
