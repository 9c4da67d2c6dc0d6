//! Manual certificates: a PEM chain and key the user manages (e.g. from their own CA or
//! another ACME client). The files are polled; a valid replacement is served to new
//! connections without a restart, a broken one is refused with an event and the old
//! certificate stays.
//!
//! Polling (size + mtime every `POLL`) instead of inotify: it sees atomic renames, bind
//! mounts and NFS alike, costs two `stat` calls, and needs no extra crate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;

use super::CertError;
use super::self_signed::CertSlot;
use super::status::{CertFacts, TlsStatus};
use crate::audit::Audit;
use crate::audit::{ClientInfo, EventKind, SecurityEvent, Severity};

/// How often the files are checked.
pub const POLL: Duration = Duration::from_secs(2);

/// Loads and checks a certificate chain and its key.
pub fn load_pair(cert_file: &Path, key_file: &Path) -> Result<(Arc<CertifiedKey>, CertFacts), CertError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| CertError::Read { path: path.display().to_string(), source })
    };
    let cert_pem = read(cert_file)?;
    let key_pem = zeroize::Zeroizing::new(read(key_file)?);
    let (certified, facts) = super::certified_from_pem(
        &cert_pem,
        &key_pem,
        &cert_file.display().to_string(),
        &key_file.display().to_string(),
    )?;
    if facts.not_after < crate::clock::now() {
        return Err(CertError::Expired(cert_file.display().to_string()));
    }
    Ok((certified, facts))
}

fn stamp(paths: &[&PathBuf]) -> Vec<Option<(u64, SystemTime)>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).ok().map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH))))
        .collect()
}

/// Watches the files and swaps the served certificate when they change.
pub fn watch(
    cert_file: PathBuf,
    key_file: PathBuf,
    slot: Arc<CertSlot>,
    status: Arc<TlsStatus>,
    audit: Audit,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = ClientInfo { ip: "local".into(), ..Default::default() };
        let mut seen = stamp(&[&cert_file, &key_file]);
        loop {
            tokio::time::sleep(POLL).await;
            let now_stamp = stamp(&[&cert_file, &key_file]);
            if now_stamp == seen {
                continue;
            }
            // Let a writer that replaces both files finish the second one.
            tokio::time::sleep(Duration::from_millis(300)).await;
            seen = stamp(&[&cert_file, &key_file]);
            let target = cert_file.display().to_string();
            match load_pair(&cert_file, &key_file) {
                Ok((certified, facts)) => {
                    if status.get().cert.as_ref().is_some_and(|c| c.fingerprint == facts.fingerprint) {
                        continue;
                    }
                    slot.replace(certified);
                    tracing::info!(serial = %facts.serial, not_after = facts.not_after, "reloaded the manual certificate");
                    let ev = SecurityEvent::new(EventKind::CertificateRenewed, Severity::Info, &client)
                        .actor("system")
                        .target(&target)
                        .detail("serial", &facts.serial)
                        .detail("not_after", facts.not_after.to_string());
                    status.update(|s| {
                        s.cert = Some(facts);
                        s.last_attempt = Some(crate::clock::now());
                        s.last_error = None;
                    });
                    audit.record_background(ev);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "refused the changed certificate files; still serving the previous certificate");
                    // The status page and the event show the line.
                    let e = e.to_string();
                    status.update(|s| {
                        s.last_attempt = Some(crate::clock::now());
                        s.last_error = Some(e.clone());
                    });
                    audit.record_background(
                        SecurityEvent::new(EventKind::CertificateRenewalFailed, Severity::Warning, &client)
                            .actor("system")
                            .target(&target)
                            .detail("error", e),
                    );
                }
            }
        }
    })
}

/// Warns (once a day) when the served certificate has less than a week left; Let's
/// Encrypt no longer emails about expiry, so this is the reminder.
pub fn expiry_watch(status: Arc<TlsStatus>, audit: Audit) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = ClientInfo { ip: "local".into(), ..Default::default() };
        let mut last_warned: Option<i64> = None;
        loop {
            let info = status.get();
            if let Some(c) = &info.cert {
                let now = crate::clock::now();
                let left = c.not_after - now;
                if left < 7 * 86_400 && last_warned.is_none_or(|t| now - t >= 86_400) {
                    last_warned = Some(now);
                    tracing::warn!(days_left = left / 86_400, serial = %c.serial, "the TLS certificate expires in under 7 days");
                    audit.record_background(
                        SecurityEvent::new(EventKind::CertificateExpiring, Severity::Warning, &client)
                            .actor("system")
                            .target(c.names.join(","))
                            .detail("seconds_left", left.to_string()),
                    );
                }
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    })
}
