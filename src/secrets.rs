//! Named secrets an operator sets for the gate to use — today the values of a route's
//! `upstream_headers` (Miauflix's `X-Reverse-Proxy-Secret`). Write-only: they are set through
//! the API or the CLI, listed by name with when they were set and the data key they are sealed
//! with, deleted, and read only by the gate itself. Each is one record `named.<name>` of the
//! store's `secrets` table, its value sealed by the keyring with the name bound into the
//! associated data (a value copied under another name does not open). Knows nothing of HTTP.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use redb::ReadableTable;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::audit::{Audit, ClientInfo, EventKind, SecurityEvent, Severity};
use crate::crypto::Keyring;
use crate::crypto::sealed::{self, SealedError, Secret};
use crate::store::{Store, StoreError, tables};

const PREFIX: &str = "named.";
const FIELD: &str = "named_secret";
/// The longest value accepted (a header value, a token: far below this).
pub const MAX_VALUE_LEN: usize = 4096;

/// Why a named secret could not be set or read. Never carries the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("a secret name is 1 to 64 characters of a-z, 0-9, '_', '-' and '.', starting with a letter or digit")]
    BadName,
    #[error("a secret value is 1 to 4096 bytes of visible ASCII or spaces, without leading or trailing blanks")]
    BadValue,
    #[error(transparent)]
    Sealed(#[from] SealedError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored secret record {0} is malformed")]
    Malformed(String),
}

#[derive(Serialize, Deserialize)]
struct Record {
    value_sealed: String,
    updated_at: i64,
}

/// What the listing shows of a secret: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretInfo {
    pub name: String,
    /// Unix seconds of the last `set`.
    pub updated_at: i64,
    /// The data key the value is sealed with.
    pub key_id: u32,
}

/// Whether `name` is a valid secret name.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.'))
}

/// Whether `value` may be a secret's value: it is sent as a header value, so visible ASCII
/// and inner spaces only (no CR, LF, NUL or other controls — no header injection — and no
/// blanks at either end, which HTTP would strip).
pub fn valid_value(value: &[u8]) -> bool {
    (1..=MAX_VALUE_LEN).contains(&value.len())
        && value.iter().all(|b| (0x21..=0x7e).contains(b) || *b == b' ')
        && value.first() != Some(&b' ')
        && value.last() != Some(&b' ')
}

fn record(name: &str) -> String {
    format!("{PREFIX}{name}")
}

fn secret(record: &str) -> Secret<'_> {
    Secret::new(FIELD, record)
}

fn read_record(store: &Store, name: &str) -> Result<Option<Record>, SecretsError> {
    let rec = record(name);
    match store.get_secret(&rec)? {
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|_| SecretsError::Malformed(rec)),
        None => Ok(None),
    }
}

async fn write_record(store: &Store, name: &str, rec: &Record) -> Result<(), SecretsError> {
    let bytes = serde_json::to_vec(rec).map_err(|_| SecretsError::Malformed(record(name)))?;
    store.put_secret(record(name), bytes).await?;
    Ok(())
}

/// Seals `value` under `name` (replacing an earlier value), durably.
pub async fn set(store: &Store, keyring: &Keyring, name: &str, value: &[u8]) -> Result<(), SecretsError> {
    if !valid_name(name) {
        return Err(SecretsError::BadName);
    }
    if !valid_value(value) {
        return Err(SecretsError::BadValue);
    }
    let rec = record(name);
    let value_sealed = sealed::seal(keyring, &secret(&rec), value)?;
    write_record(store, name, &Record { value_sealed, updated_at: crate::clock::now() }).await
}

/// The value set under `name`, if any.
pub fn get(store: &Store, keyring: &Keyring, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>, SecretsError> {
    if !valid_name(name) {
        return Err(SecretsError::BadName);
    }
    match read_record(store, name)? {
        Some(r) => Ok(Some(sealed::open(keyring, &secret(&record(name)), &r.value_sealed)?)),
        None => Ok(None),
    }
}

/// Deletes the secret; `false` when there was none.
pub async fn delete(store: &Store, name: &str) -> Result<bool, SecretsError> {
    if !valid_name(name) {
        return Err(SecretsError::BadName);
    }
    let rec = record(name);
    Ok(store
        .write(move |txn| {
            let mut t = txn.open_table(tables::SECRETS)?;
            Ok(t.remove(rec.as_str())?.is_some())
        })
        .await?)
}

/// Every secret by name, with when it was set and its data key (never the value).
pub fn list(store: &Store) -> Result<Vec<SecretInfo>, SecretsError> {
    let rows: Vec<(String, Vec<u8>)> = store.read(|txn| {
        let t = txn.open_table(tables::SECRETS)?;
        let mut rows = Vec::new();
        for row in t.range(PREFIX..)? {
            let (k, v) = row?;
            let Some(name) = k.value().strip_prefix(PREFIX) else { break };
            rows.push((name.to_string(), v.value().to_vec()));
        }
        Ok(rows)
    })?;
    rows.into_iter()
        .map(|(name, bytes)| {
            let rec = record(&name);
            let r: Record = serde_json::from_slice(&bytes).map_err(|_| SecretsError::Malformed(rec.clone()))?;
            let key_id = sealed::key_id(&secret(&rec), &r.value_sealed)?;
            Ok(SecretInfo { name, updated_at: r.updated_at, key_id })
        })
        .collect()
}

/// Re-seals every named secret with the active data key (key rotation); how many. Each
/// record is replaced only if it still holds what was read (compare and swap inside the
/// write), so a value set meanwhile is not overwritten with the old one.
pub async fn reencrypt(store: &Store, keyring: &Keyring) -> Result<usize, SecretsError> {
    let mut swaps: Vec<(String, Vec<u8>, Vec<u8>)> = Vec::new();
    for info in list(store)? {
        let rec = record(&info.name);
        let Some(old) = store.get_secret(&rec)? else { continue };
        let mut r: Record = serde_json::from_slice(&old).map_err(|_| SecretsError::Malformed(rec.clone()))?;
        r.value_sealed = sealed::reseal(keyring, &secret(&rec), &r.value_sealed)?;
        let new = serde_json::to_vec(&r).map_err(|_| SecretsError::Malformed(rec.clone()))?;
        swaps.push((rec, old, new));
    }
    let n = swaps.len();
    store
        .write(move |txn| {
            let mut t = txn.open_table(tables::SECRETS)?;
            for (rec, old, new) in &swaps {
                let same = t.get(rec.as_str())?.is_some_and(|v| v.value() == old.as_slice());
                if same {
                    t.insert(rec.as_str(), new.as_slice())?;
                }
            }
            Ok(())
        })
        .await?;
    Ok(n)
}

/// The named secrets of a running gate: the store's records and, for the proxy path, every
/// value opened once into memory (a request reads a map, not the store and a cipher). `set`
/// and `delete` write through and record a `config_changed` event.
pub struct Secrets {
    store: Store,
    keyring: Arc<Keyring>,
    audit: Audit,
    values: RwLock<HashMap<String, Arc<Zeroizing<Vec<u8>>>>>,
    /// Held across a change's store write and memory update, so concurrent changes reach
    /// both in the same order (the running gate never sends another value than the file holds).
    changes: tokio::sync::Mutex<()>,
}

impl Secrets {
    /// Opens every stored value.
    pub fn open(store: Store, keyring: Arc<Keyring>, audit: Audit) -> Result<Secrets, SecretsError> {
        let mut values = HashMap::new();
        for info in list(&store)? {
            if let Some(v) = get(&store, &keyring, &info.name)? {
                values.insert(info.name, Arc::new(v));
            }
        }
        Ok(Secrets { store, keyring, audit, values: RwLock::new(values), changes: tokio::sync::Mutex::new(()) })
    }

    /// The value set under `name`, from memory.
    pub fn value(&self, name: &str) -> Option<Arc<Zeroizing<Vec<u8>>>> {
        self.values.read().ok()?.get(name).cloned()
    }

    /// Every secret by name (never the value).
    pub fn list(&self) -> Result<Vec<SecretInfo>, SecretsError> {
        list(&self.store)
    }

    /// Seals and stores `value` under `name`; what the listing now shows of it.
    pub async fn set(
        &self,
        name: &str,
        value: &[u8],
        actor: &str,
        client: &ClientInfo,
    ) -> Result<SecretInfo, SecretsError> {
        {
            let _change = self.changes.lock().await;
            set(&self.store, &self.keyring, name, value).await?;
            if let Ok(mut m) = self.values.write() {
                m.insert(name.to_string(), Arc::new(Zeroizing::new(value.to_vec())));
            }
        }
        SecurityEvent::new(EventKind::ConfigChanged, Severity::Info, client)
            .actor(actor)
            .detail("sections", "secrets")
            .detail("secret_set", name.to_string())
            .record(&self.audit)
            .await;
        self.list()?.into_iter().find(|s| s.name == name).ok_or_else(|| SecretsError::Malformed(record(name)))
    }

    /// Deletes `name`; `false` when there was none.
    pub async fn delete(&self, name: &str, actor: &str, client: &ClientInfo) -> Result<bool, SecretsError> {
        let existed = {
            let _change = self.changes.lock().await;
            let existed = delete(&self.store, name).await?;
            if let Ok(mut m) = self.values.write() {
                m.remove(name);
            }
            existed
        };
        if existed {
            SecurityEvent::new(EventKind::ConfigChanged, Severity::Warning, client)
                .actor(actor)
                .detail("sections", "secrets")
                .detail("secret_deleted", name.to_string())
                .record(&self.audit)
                .await;
        }
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::{valid_name, valid_value};

    #[test]
    fn names_are_a_small_alphabet() {
        for ok in ["miauflix_proxy_secret", "a", "x.y-z_0", &"a".repeat(64)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "Upper", "a/b", "a b", "../x", "..", ".a", "-a", "é", "a\0", &"a".repeat(65), "named.x\n"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn values_cannot_inject_headers() {
        for ok in [&b"s3cr3t"[..], b"with inner space", b"~!@#$%^&*()"] {
            assert!(valid_value(ok), "{ok:?}");
        }
        let long = vec![b'a'; super::MAX_VALUE_LEN + 1];
        for bad in [
            &b""[..],
            b"a\r\nX-Evil: 1",
            b"a\nb",
            b"a\0b",
            b"\ttab",
            b" lead",
            b"trail ",
            b"\x7f",
            "é".as_bytes(),
            &long,
        ] {
            assert!(!valid_value(bad), "{bad:?}");
        }
    }
}
