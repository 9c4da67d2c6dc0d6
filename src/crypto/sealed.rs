//! Sealed secrets: the one envelope for every secret the gate keeps in the store's `secrets`
//! table — JWT signing keys, the stream-URL key, the self-signed and ACME private keys, the
//! ACME account key, the VPN key. A [`Secret`] names where the value sits (the field and the
//! record, bound into the associated data, so a sealed value copied to another place does not
//! open) and how the store keeps the envelope: as base64 text, or as raw bytes (ACME account
//! keys, as earlier versions wrote them). Owners whose record holds more than the secret (a
//! certificate chain beside its key, a list of signing keys) seal a field with
//! [`seal`]/[`open`]; owners whose record is the secret use [`get`]/[`put`]. [`reseal`] and
//! [`reseal_record`] re-encrypt with the active data key after a rotation.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use super::{CryptoError, FieldContext, Keyring};
use crate::store::{Store, StoreError};

/// The store table every sealed secret lives in.
const TABLE: &str = "secrets";

/// Where a sealed value sits and how its envelope is kept.
#[derive(Debug, Clone, Copy)]
pub struct Secret<'a> {
    /// The field name bound into the associated data (`jwt_private_key`, `private_key`, …).
    pub field: &'a str,
    /// The record the value belongs to (its `secrets` key, or a signing key's id).
    pub record: &'a str,
    raw: bool,
}

impl<'a> Secret<'a> {
    /// A value kept as base64 text of the envelope.
    pub const fn new(field: &'a str, record: &'a str) -> Secret<'a> {
        Secret { field, record, raw: false }
    }

    /// A value kept as the raw envelope bytes.
    pub const fn raw(field: &'a str, record: &'a str) -> Secret<'a> {
        Secret { field, record, raw: true }
    }

    fn ctx(&self) -> FieldContext<'a> {
        FieldContext::new(TABLE, self.field, self.record)
    }
}

/// Why a sealed value could not be read or written. Never carries the value.
#[derive(Debug, thiserror::Error)]
pub enum SealedError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("sealed {field}: {source}")]
    Crypto {
        field: String,
        #[source]
        source: CryptoError,
    },
    #[error("sealed {0} is not base64")]
    Encoding(String),
}

impl From<SealedError> for StoreError {
    fn from(e: SealedError) -> StoreError {
        match e {
            SealedError::Store(e) => e,
            other => StoreError::Codec(other.to_string()),
        }
    }
}

fn crypto(secret: &Secret<'_>) -> impl FnOnce(CryptoError) -> SealedError {
    let field = secret.field.to_string();
    move |source| SealedError::Crypto { field, source }
}

/// The envelope a field sealed by [`seal`] holds (for checks that look at the key id).
pub fn envelope(secret: &Secret<'_>, text: &str) -> Result<Vec<u8>, SealedError> {
    B64.decode(text).map_err(|_| SealedError::Encoding(secret.field.to_string()))
}

/// Seals `plain` with the active data key; base64 text, for a field of a record.
pub fn seal(keyring: &Keyring, secret: &Secret<'_>, plain: &[u8]) -> Result<String, SealedError> {
    keyring.encrypt(&secret.ctx(), plain).map(|b| B64.encode(b)).map_err(crypto(secret))
}

/// Opens a value sealed by [`seal`].
pub fn open(keyring: &Keyring, secret: &Secret<'_>, text: &str) -> Result<Zeroizing<Vec<u8>>, SealedError> {
    keyring.decrypt(&secret.ctx(), &envelope(secret, text)?).map_err(crypto(secret))
}

/// The same value sealed again with the active data key.
pub fn reseal(keyring: &Keyring, secret: &Secret<'_>, text: &str) -> Result<String, SealedError> {
    seal(keyring, secret, &open(keyring, secret, text)?)
}

/// The data key id a value sealed by [`seal`] was sealed with, without opening it.
pub fn key_id(secret: &Secret<'_>, text: &str) -> Result<u32, SealedError> {
    Keyring::key_id_of(&envelope(secret, text)?).map_err(crypto(secret))
}

/// The envelope a record holds, if the record exists (for checks that look at the key id).
pub fn stored_envelope(store: &Store, secret: &Secret<'_>) -> Result<Option<Vec<u8>>, SealedError> {
    let Some(bytes) = store.get_secret(secret.record)? else { return Ok(None) };
    if secret.raw {
        return Ok(Some(bytes));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| SealedError::Encoding(secret.field.to_string()))?;
    envelope(secret, text).map(Some)
}

/// The record's value opened, if the record exists.
pub fn get(store: &Store, keyring: &Keyring, secret: &Secret<'_>) -> Result<Option<Zeroizing<Vec<u8>>>, SealedError> {
    match stored_envelope(store, secret)? {
        Some(env) => keyring.decrypt(&secret.ctx(), &env).map(Some).map_err(crypto(secret)),
        None => Ok(None),
    }
}

/// Seals `plain` and writes it as the record's value (durably, through the store's writer).
pub async fn put(store: &Store, keyring: &Keyring, secret: &Secret<'_>, plain: &[u8]) -> Result<(), SealedError> {
    let env = keyring.encrypt(&secret.ctx(), plain).map_err(crypto(secret))?;
    let bytes = if secret.raw { env } else { B64.encode(env).into_bytes() };
    store.put_secret(secret.record, bytes).await?;
    Ok(())
}

/// Re-seals the record's value with the active data key; `false` when there is no record.
pub async fn reseal_record(store: &Store, keyring: &Keyring, secret: &Secret<'_>) -> Result<bool, SealedError> {
    let Some(plain) = get(store, keyring, secret)? else { return Ok(false) };
    put(store, keyring, secret, &plain).await?;
    Ok(true)
}

/// The data key id the record's value is sealed with, if the record exists.
pub fn record_key_id(store: &Store, secret: &Secret<'_>) -> Result<Option<u32>, SealedError> {
    match stored_envelope(store, secret)? {
        Some(env) => Keyring::key_id_of(&env).map(Some).map_err(crypto(secret)),
        None => Ok(None),
    }
}
