//! Offline maintenance commands that open the data file directly (the gate must be stopped:
//! redb allows one process at a time, and the lock error says so).

use std::sync::Arc;

use anyhow::Context;

use crate::auth::tokens::SigningKeys;
use crate::auth::{ClientInfo, EventKind, SecurityEvent, Severity};
use crate::config::Config;
use crate::crypto::{Keyring, MasterKey};
use crate::store::{Store, StoreError};

/// What `keys rotate` did.
#[derive(Debug)]
pub struct RotationReport {
    pub data_key_id: u32,
    pub signing_kid: String,
    pub reencrypted_fields: usize,
}

fn open_existing(config: &Config) -> anyhow::Result<(Store, MasterKey)> {
    let key_path = config.master_key_path();
    let store_path = config.store_path();
    if !store_path.exists() {
        anyhow::bail!("no data file at {}; start the gate once first", store_path.display());
    }
    if !key_path.exists() {
        anyhow::bail!("master key file {} is missing", key_path.display());
    }
    let master = MasterKey::load_or_create(&key_path)?;
    let store = Store::open(&store_path).map_err(|e| match e {
        StoreError::Locked(p) => anyhow::anyhow!("data file {} is in use; stop the gate first", p.display()),
        other => other.into(),
    })?;
    Ok((store, master))
}

/// Makes a new field-encryption key and a new JWT signing key, and re-encrypts every
/// encrypted field with the new data key. Old keys stay in the rings: the old data key
/// still decrypts, the old signing key verifies until its tokens expire.
pub async fn rotate_keys(config: &Config) -> anyhow::Result<RotationReport> {
    let (store, master) = open_existing(config)?;
    let result = async {
        let keyring = Arc::new(Keyring::load_or_init(&store, &master).await?);
        let data_key_id = keyring.add_key(&store, &master).await?;
        let signing_kid = SigningKeys::rotate(&store, &keyring, config.auth.access_ttl_secs)
            .await
            .context("rotating the signing key")?;
        let mut n = SigningKeys::reencrypt(&store, &keyring).await.context("re-encrypting signing keys")?;
        if crate::tls::self_signed::reencrypt(&store, &keyring).await.context("re-encrypting the TLS key")? {
            n += 1;
        }
        SecurityEvent::new(
            EventKind::KeysRotated,
            Severity::Info,
            &ClientInfo { ip: "local".into(), ..Default::default() },
        )
        .actor("cli")
        .detail("data_key", data_key_id.to_string())
        .detail("signing_kid", signing_kid.clone())
        .record(&crate::audit::Audit::new(store.clone(), Default::default()))
        .await;
        Ok::<_, anyhow::Error>(RotationReport { data_key_id, signing_kid, reencrypted_fields: n })
    }
    .await;
    store.close().await;
    result
}

fn open_store_only(config: &Config) -> anyhow::Result<Store> {
    let store_path = config.store_path();
    if !store_path.exists() {
        anyhow::bail!("no data file at {}; start the gate once first", store_path.display());
    }
    Store::open(&store_path).map_err(|e| match e {
        StoreError::Locked(p) => anyhow::anyhow!("data file {} is in use; stop the gate first", p.display()),
        other => other.into(),
    })
}

/// `audit verify`: recomputes the hash chain of the stopped gate's data file.
pub async fn audit_verify(config: &Config) -> anyhow::Result<crate::audit::VerifyReport> {
    let store = open_store_only(config)?;
    let audit = crate::audit::Audit::new(store.clone(), Default::default());
    let report = audit.verify();
    store.close().await;
    Ok(report?)
}

/// `audit export`: writes records in `[since, until]` as JSON Lines.
pub async fn audit_export(
    config: &Config,
    since: Option<&str>,
    until: Option<&str>,
    out: &mut impl std::io::Write,
) -> anyhow::Result<u64> {
    let parse = |name: &str, v: Option<&str>| -> anyhow::Result<Option<i64>> {
        v.map(|v| {
            time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                .map_err(|_| anyhow::anyhow!("--{name} must be an RFC 3339 time such as 2026-11-29T08:00:00Z"))
        })
        .transpose()
    };
    let (since, until) = (parse("since", since)?, parse("until", until)?);
    let store = open_store_only(config)?;
    let audit = crate::audit::Audit::new(store.clone(), Default::default());
    let n = crate::http::api::audit::export_lines(&audit, since, until, out);
    store.close().await;
    n
}
