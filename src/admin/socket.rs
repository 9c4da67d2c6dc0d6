//! The admin socket: server side (in the gate) and client side (in the CLI).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::{AdminCommand, MAX_REQUEST, Payload, Response};
use crate::audit::{ClientInfo, EventKind, SecurityEvent, Severity};
use crate::core::Core;

/// The effective uid of this process (the owner of `/proc/self`).
pub fn own_uid() -> u32 {
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX)
}

/// Who may use the socket: root and the user the gate runs as.
pub fn authorized(peer_uid: u32, gate_uid: u32) -> bool {
    peer_uid == 0 || peer_uid == gate_uid
}

/// Binds `<data>/admin.sock` (0600); the future it returns serves commands until dropped
/// (the core stops it at shutdown).
pub fn bind(core: Core, path: PathBuf) -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            anyhow::bail!("another gate already answers on {}", path.display());
        }
        std::fs::remove_file(&path).map_err(|e| anyhow::anyhow!("cannot remove stale {}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(&path)
        .map_err(|e| anyhow::anyhow!("cannot bind the admin socket {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let gate_uid = own_uid();
    tracing::info!(path = %path.display(), "admin socket ready (root and the service user only)");
    Ok(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let core = core.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(core, stream, gate_uid).await {
                    tracing::debug!(error = %e, "admin connection ended");
                }
            });
        }
    })
}

async fn respond(stream: &mut UnixStream, resp: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(resp).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await
}

async fn handle(core: Core, mut stream: UnixStream, gate_uid: u32) -> std::io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    if !authorized(uid, gate_uid) {
        let client =
            ClientInfo { ip: "local".into(), user_agent: format!("admin socket (uid {uid})"), ..Default::default() };
        SecurityEvent::new(EventKind::PermissionDenied, Severity::Warning, &client)
            .actor(format!("uid:{uid}"))
            .target("admin.sock")
            .record(core.auth.audit())
            .await;
        let error = "permission denied: only root and the gate's service user may use the admin socket".to_string();
        respond(&mut stream, &Response::Error(error)).await?;
        // Read the request away (bounded, briefly, never parsed) before closing, so the client
        // reads the refusal instead of a reset for the unread line.
        let mut sink = zeroize::Zeroizing::new(Vec::with_capacity(MAX_REQUEST));
        let mut reader = BufReader::new(&mut stream).take(MAX_REQUEST as u64);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), reader.read_until(b'\n', &mut sink)).await;
        return Ok(());
    }
    // Never grown past its first allocation (`take` stops at MAX_REQUEST): zeroized below.
    let mut line = Vec::with_capacity(MAX_REQUEST);
    let n = {
        let mut reader = BufReader::new(&mut stream).take(MAX_REQUEST as u64);
        reader.read_until(b'\n', &mut line).await?
    };
    if n == 0 {
        return Ok(());
    }
    let parsed = AdminCommand::from_line(&line);
    zeroize::Zeroize::zeroize(&mut line);
    let cmd = match parsed {
        Ok(c) => c,
        Err(error) => return respond(&mut stream, &Response::Error(error)).await,
    };
    match cmd.apply(&core, uid).await {
        Err(error) => respond(&mut stream, &Response::Error(error.to_string())).await,
        Ok((reply, None)) => respond(&mut stream, &Response::Ok { reply, payload_bytes: 0 }).await,
        Ok((reply, Some(Payload::TempFile(path)))) => {
            let result = async {
                let mut file = tokio::fs::File::open(&path).await?;
                let len = file.metadata().await?.len();
                respond(&mut stream, &Response::Ok { reply, payload_bytes: len }).await?;
                tokio::io::copy(&mut file, &mut stream).await.map(|_| ())
            }
            .await;
            let _ = std::fs::remove_file(&path);
            result
        }
    }
}

/// Client side: sends `cmd`, returns the response and the stream positioned at the payload.
/// `Ok(None)` when no gate answers on `path` (the CLI then opens the store itself).
pub async fn send(path: &Path, cmd: &AdminCommand) -> anyhow::Result<Option<(Response, BufReader<UnixStream>)>> {
    let mut stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(None);
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            anyhow::bail!("permission denied on {}: run as root or as the gate's service user", path.display())
        }
        Err(e) => anyhow::bail!("cannot reach the gate on {}: {e}", path.display()),
    };
    // Sized for the longest line the gate reads, so it never grows and leaves a copy of a
    // secret behind in a freed buffer.
    let mut line = Vec::with_capacity(MAX_REQUEST);
    serde_json::to_writer(&mut line, cmd)?;
    line.push(b'\n');
    let written = stream.write_all(&line).await;
    zeroize::Zeroize::zeroize(&mut line);
    match written {
        // A gate that refuses the caller answers at once and closes without reading the
        // request: its one-line refusal is still there to read.
        Err(e) if matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) => {}
        Err(e) => return Err(e.into()),
        Ok(()) => {}
    }
    let mut reader = BufReader::new(stream);
    let mut resp_line = String::new();
    reader.read_line(&mut resp_line).await?;
    if resp_line.is_empty() {
        anyhow::bail!("the gate closed the admin connection without answering");
    }
    let resp: Response =
        serde_json::from_str(&resp_line).map_err(|_| anyhow::anyhow!("the gate sent a malformed answer"))?;
    Ok(Some((resp, reader)))
}
