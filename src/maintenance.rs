//! Maintenance on the data file: key rotation (run by the admin commands, online or
//! offline) and restore from a backup (gate stopped).

use anyhow::Context;

use crate::audit::{ClientInfo, EventKind, SecurityEvent, Severity};
use crate::auth::tokens::SigningKeys;
use crate::config::Config;
use crate::crypto::sealed;
use crate::crypto::{Keyring, MasterKey};
use crate::store::{Store, StoreError};

/// What `keys rotate` did (also its admin reply: `dataKey`, `signingKid`, `reencrypted`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RotationReport {
    #[serde(rename = "dataKey")]
    pub data_key_id: u32,
    pub signing_kid: String,
    #[serde(rename = "reencrypted")]
    pub reencrypted_fields: usize,
}

/// The rotation itself, on an open store (the running gate calls it through the admin
/// socket, then reloads its signing keys).
pub async fn rotate_with(
    store: &Store,
    keyring: &Keyring,
    master: &MasterKey,
    access_ttl: i64,
    audit: &crate::audit::Audit,
    client: &ClientInfo,
) -> anyhow::Result<RotationReport> {
    let data_key_id = keyring.add_key(store, master).await?;
    let signing_kid = SigningKeys::rotate(store, keyring, access_ttl).await.context("rotating the signing key")?;
    let mut n = SigningKeys::reencrypt(store, keyring).await.context("re-encrypting signing keys")?;
    if crate::tls::self_signed::reencrypt(store, keyring).await.context("re-encrypting the TLS key")? {
        n += 1;
    }
    if crate::vpn::reencrypt(store, keyring).await.context("re-encrypting the VPN key")? {
        n += 1;
    }
    if crate::auth::stream_keys::reencrypt(store, keyring).await.context("re-encrypting the stream-URL key")? {
        n += 1;
    }
    n += crate::tls::acme::reencrypt(store, keyring).await.context("re-encrypting the ACME keys")?;
    n += crate::secrets::reencrypt(store, keyring).await.context("re-encrypting the named secrets")?;
    SecurityEvent::new(EventKind::KeysRotated, Severity::Info, client)
        .actor("cli")
        .detail("data_key", data_key_id.to_string())
        .detail("signing_kid", signing_kid.clone())
        .record(audit)
        .await;
    Ok(RotationReport { data_key_id, signing_kid, reencrypted_fields: n })
}

/// Every sealed value in the store and the data key id it is sealed with: signing keys, the
/// self-signed key, the VPN key, the stream-URL key, the ACME account and certificate keys,
/// the named secrets.
pub fn sealed_values(store: &Store) -> anyhow::Result<Vec<(String, u32)>> {
    let mut out: Vec<(String, u32)> =
        SigningKeys::sealed_key_ids(store)?.into_iter().map(|(kid, id)| (format!("signing key {kid}"), id)).collect();
    if let Some(id) = crate::tls::self_signed::sealed_key_id(store)? {
        out.push(("self-signed TLS key".into(), id));
    }
    if let Some(id) = sealed::record_key_id(store, &crate::vpn::SECRET)? {
        out.push(("VPN private key".into(), id));
    }
    if let Some(id) = sealed::record_key_id(store, &crate::auth::stream_keys::SECRET)? {
        out.push(("stream-URL key".into(), id));
    }
    for (name, envelope) in crate::tls::acme::sealed_entries(store)? {
        out.push((name, Keyring::key_id_of(&envelope)?));
    }
    for s in crate::secrets::list(store)? {
        out.push((format!("secret {}", s.name), s.key_id));
    }
    Ok(out)
}

/// Deletes an old data key once no sealed value needs it (`keys retire`); refuses the
/// active key and a key some value is still sealed with.
pub async fn retire(
    store: &Store,
    keyring: &Keyring,
    key_id: u32,
    audit: &crate::audit::Audit,
    client: &ClientInfo,
) -> anyhow::Result<()> {
    if key_id == keyring.active_key_id() {
        anyhow::bail!("data key {key_id} is the active key; rotate first");
    }
    let users: Vec<String> =
        sealed_values(store)?.into_iter().filter(|(_, id)| *id == key_id).map(|(name, _)| name).collect();
    if !users.is_empty() {
        anyhow::bail!(
            "data key {key_id} still seals {} value(s) ({}); run keys rotate first",
            users.len(),
            users.join(", ")
        );
    }
    keyring.retire(store, key_id).await?;
    SecurityEvent::new(EventKind::KeysRotated, Severity::Info, client)
        .actor("cli")
        .detail("retired_data_key", key_id.to_string())
        .record(audit)
        .await;
    Ok(())
}

/// Replaces the data file with `from` after checking it: redb integrity, schema version
/// (newer is refused), a keyring the current master key unwraps, and an audit chain that
/// verifies. The gate must be stopped. Returns where the replaced file was kept.
pub async fn restore(config: &Config, from: &std::path::Path) -> anyhow::Result<Option<std::path::PathBuf>> {
    let store_path = config.store_path();
    let sock = config.admin_socket_path();
    if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
        anyhow::bail!("the gate is running; stop it first (restore replaces its data file)");
    }
    if store_path.exists() {
        match Store::open(&store_path) {
            Err(StoreError::Locked(_)) => {
                anyhow::bail!("data file {} is in use; stop the gate first", store_path.display())
            }
            Ok(s) => s.close().await,
            Err(_) => {} // a broken current file may well be why we restore
        }
    }
    if !from.is_file() {
        anyhow::bail!("{} is not a file", from.display());
    }
    let key_path = config.master_key_path();
    if !key_path.exists() {
        anyhow::bail!(
            "master key file {} is missing; restore needs the key that belongs to the backup",
            key_path.display()
        );
    }
    crate::core::prepare_data_dir(config)?;
    // Root may run this in a directory the service user owns: no entry is followed.
    use crate::store::files;
    for path in [&store_path, &key_path] {
        files::refuse_symlink(path)?;
    }
    let staging = config.data_dir.join(".restore-check.redb");
    match std::fs::symlink_metadata(&staging) {
        Ok(_) => std::fs::remove_file(&staging).with_context(|| format!("cannot remove {}", staging.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", staging.display())),
    }
    let copy = || -> anyhow::Result<std::fs::File> {
        let mut source = std::fs::File::open(from).with_context(|| format!("cannot read {}", from.display()))?;
        let mut file =
            files::create_new(&staging, 0o600).with_context(|| format!("cannot create {}", staging.display()))?;
        std::io::copy(&mut source, &mut file).with_context(|| format!("cannot copy {}", from.display()))?;
        file.sync_all()?;
        Ok(file)
    };
    let staged = match copy() {
        Ok(f) => f,
        Err(e) => {
            if !std::fs::symlink_metadata(&staging).is_ok_and(|m| m.file_type().is_symlink()) {
                let _ = std::fs::remove_file(&staging);
            }
            return Err(e);
        }
    };
    let checked = async {
        let store = Store::open(&staging).map_err(|e| anyhow::anyhow!("the backup is not usable: {e}"))?;
        let result = async {
            let has_keys = store.read(|txn| {
                use redb::ReadableTableMetadata;
                Ok(txn.open_table(crate::store::tables::KEYRING)?.len()? > 0)
            })?;
            if !has_keys {
                anyhow::bail!("the backup holds no keyring; it is not a miauflix-gate backup");
            }
            let master = MasterKey::load(&key_path)?;
            Keyring::load_or_init(&store, &master).await.map_err(|_| {
                anyhow::anyhow!(
                    "the current master key ({}) cannot decrypt this backup; put the key that belongs to it in place first",
                    key_path.display()
                )
            })?;
            let report = crate::audit::Audit::new(store.clone(), Default::default()).verify()?;
            if !report.ok {
                anyhow::bail!("the backup's audit chain does not verify (record {:?})", report.first_bad);
            }
            Ok(())
        }
        .await;
        store.close().await;
        result
    }
    .await;
    if let Err(e) = checked {
        let _ = std::fs::remove_file(&staging);
        return Err(e);
    }
    // The checks ran on the file this process created; the name must still be that file.
    if !files::is_same_file(&staging, &staged) {
        anyhow::bail!("{} was replaced during the restore; nothing was changed", staging.display());
    }
    let aside = if std::fs::symlink_metadata(&store_path).is_ok() {
        let aside = config.data_dir.join(format!("gate.redb.before-restore-{}", crate::clock::now()));
        std::fs::rename(&store_path, &aside).with_context(|| format!("cannot move {} aside", store_path.display()))?;
        Some(aside)
    } else {
        None
    };
    std::fs::rename(&staging, &store_path)
        .with_context(|| format!("cannot put the backup at {}", store_path.display()))?;
    if !files::is_same_file(&store_path, &staged) {
        anyhow::bail!("{} was replaced during the restore; check the data directory", store_path.display());
    }
    Ok(aside)
}
