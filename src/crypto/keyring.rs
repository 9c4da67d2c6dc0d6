//! Field encryption with AES-256-GCM-SIV and a ring of data keys.
//!
//! Stored format: `version (1) | key id (4, BE) | nonce (12) | ciphertext+tag`.
//! Associated data binds the header and the field's place (table | field | record id),
//! so a ciphertext copied to another record or field fails to decrypt.
//! Data keys live in the store, each wrapped by the master key (key id 0).

use std::collections::BTreeMap;
use std::sync::RwLock;

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use redb::ReadableTable;
use zeroize::Zeroizing;

use super::{CryptoError, MasterKey, random_bytes};
use crate::store::{Store, StoreError, tables};

const VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 4;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Key id reserved for the master key when it wraps data keys.
const MASTER_KEY_ID: u32 = 0;
const ACTIVE_KEY_META: &str = "keyring.active";

/// Where an encrypted value lives; it becomes the associated data.
#[derive(Debug, Clone, Copy)]
pub struct FieldContext<'a> {
    pub table: &'a str,
    pub field: &'a str,
    pub record: &'a str,
}

impl<'a> FieldContext<'a> {
    pub fn new(table: &'a str, field: &'a str, record: &'a str) -> Self {
        FieldContext { table, field, record }
    }

    fn aad(&self, header: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(header.len() + self.table.len() + self.field.len() + self.record.len() + 12);
        aad.extend_from_slice(header);
        for part in [self.table, self.field, self.record] {
            // Length prefixes keep ("ab","c") and ("a","bc") apart.
            aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

struct Ring {
    keys: BTreeMap<u32, Aes256GcmSiv>,
    active: u32,
}

/// The data keys: the active one encrypts, every one decrypts.
pub struct Keyring {
    ring: RwLock<Ring>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("active", &self.active_key_id()).finish_non_exhaustive()
    }
}

fn seal(cipher: &Aes256GcmSiv, key_id: u32, ctx: &FieldContext<'_>, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut header = [0u8; HEADER_LEN];
    header[0] = VERSION;
    header[1..5].copy_from_slice(&key_id.to_be_bytes());
    let nonce = random_bytes::<NONCE_LEN>();
    let aad = ctx.aad(&header);
    let ct = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: &aad })
        .map_err(|_| CryptoError::Encrypt)?;
    let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + ct.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// A stored value split into its parts: (key id, header, nonce, ciphertext+tag).
type Sealed<'a> = (u32, &'a [u8], &'a [u8], &'a [u8]);

fn parse(blob: &[u8]) -> Result<Sealed<'_>, CryptoError> {
    if blob.len() < HEADER_LEN + NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Malformed);
    }
    if blob[0] != VERSION {
        return Err(CryptoError::UnsupportedVersion(blob[0]));
    }
    let key_id = u32::from_be_bytes([blob[1], blob[2], blob[3], blob[4]]);
    Ok((key_id, &blob[..HEADER_LEN], &blob[HEADER_LEN..HEADER_LEN + NONCE_LEN], &blob[HEADER_LEN + NONCE_LEN..]))
}

fn open(
    cipher: &Aes256GcmSiv,
    header: &[u8],
    nonce: &[u8],
    ct: &[u8],
    ctx: &FieldContext<'_>,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let aad = ctx.aad(header);
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Decrypt)
}

fn dek_context(id: &str) -> FieldContext<'_> {
    FieldContext::new("keyring", "data_key", id)
}

impl Keyring {
    /// A keyring from raw data keys (id, key); the highest id is active. For tests and tools.
    pub fn from_keys(keys: Vec<(u32, [u8; 32])>) -> Keyring {
        let mut map = BTreeMap::new();
        for (id, key) in keys {
            let key = Zeroizing::new(key);
            map.insert(id, Aes256GcmSiv::new((&*key).into()));
        }
        let active = map.keys().next_back().copied().unwrap_or(1);
        Keyring { ring: RwLock::new(Ring { keys: map, active }) }
    }

    /// Loads the data keys from the store, unwrapping them with the master key; on a new
    /// store, makes and saves the first one.
    pub async fn load_or_init(store: &Store, master: &MasterKey) -> Result<Keyring, KeyringError> {
        let kek = Aes256GcmSiv::new(master.bytes().into());
        let (wrapped, active) = store.read(|txn| {
            let table = txn.open_table(tables::KEYRING)?;
            let mut wrapped = Vec::new();
            for row in table.iter()? {
                let (id, blob) = row?;
                wrapped.push((id.value(), blob.value().to_vec()));
            }
            let meta = txn.open_table(tables::META)?;
            let active = meta.get(ACTIVE_KEY_META)?.and_then(|v| v.value().try_into().ok().map(u32::from_be_bytes));
            Ok((wrapped, active))
        })?;
        if wrapped.is_empty() {
            let keyring = Keyring::from_keys(Vec::new());
            keyring.add_key(store, master).await?;
            return Ok(keyring);
        }
        let mut keys = BTreeMap::new();
        for (id, blob) in wrapped {
            let (key_id, header, nonce, ct) = parse(&blob).map_err(|_| KeyringError::WrongMasterKey)?;
            if key_id != MASTER_KEY_ID {
                return Err(KeyringError::WrongMasterKey);
            }
            let raw = open(&kek, header, nonce, ct, &dek_context(&id.to_string()))
                .map_err(|_| KeyringError::WrongMasterKey)?;
            if raw.len() != 32 {
                return Err(KeyringError::WrongMasterKey);
            }
            keys.insert(id, Aes256GcmSiv::new_from_slice(&raw).map_err(|_| KeyringError::WrongMasterKey)?);
        }
        let active = active.filter(|a| keys.contains_key(a)).unwrap_or_else(|| *keys.keys().next_back().unwrap_or(&1));
        Ok(Keyring { ring: RwLock::new(Ring { keys, active }) })
    }

    /// Makes a new data key, stores it wrapped by the master key and makes it the active one.
    /// Older keys keep decrypting. Returns the new key id.
    pub async fn add_key(&self, store: &Store, master: &MasterKey) -> Result<u32, KeyringError> {
        let kek = Aes256GcmSiv::new(master.bytes().into());
        let raw = Zeroizing::new(random_bytes::<32>());
        let id = self.ring.read().map(|r| r.keys.keys().next_back().copied().unwrap_or(0) + 1).unwrap_or(1);
        let wrapped = seal(&kek, MASTER_KEY_ID, &dek_context(&id.to_string()), &raw[..])?;
        store
            .write(move |txn| {
                let mut table = txn.open_table(tables::KEYRING)?;
                table.insert(id, wrapped.as_slice())?;
                let mut meta = txn.open_table(tables::META)?;
                meta.insert(ACTIVE_KEY_META, id.to_be_bytes().as_slice())?;
                Ok(())
            })
            .await?;
        let mut ring = self.ring.write().map_err(|_| KeyringError::Poisoned)?;
        ring.keys.insert(id, Aes256GcmSiv::new((&*raw).into()));
        ring.active = id;
        Ok(id)
    }

    /// Deletes data key `id` from the store and the ring. The caller checks that no value is
    /// still sealed with it ([`crate::maintenance::retire`]); the active key is never retired.
    pub async fn retire(&self, store: &Store, id: u32) -> Result<(), KeyringError> {
        if id == self.active_key_id() {
            return Err(KeyringError::Refused(format!("data key {id} is the active key; rotate first")));
        }
        if !self.key_ids().contains(&id) {
            return Err(KeyringError::Refused(format!("there is no data key {id}")));
        }
        store
            .write(move |txn| {
                txn.open_table(tables::KEYRING)?.remove(id)?;
                Ok(())
            })
            .await?;
        self.ring.write().map_err(|_| KeyringError::Poisoned)?.keys.remove(&id);
        Ok(())
    }

    /// The id of the key that encrypts new values.
    pub fn active_key_id(&self) -> u32 {
        self.ring.read().map(|r| r.active).unwrap_or(0)
    }

    /// The ids of every key in the ring.
    pub fn key_ids(&self) -> Vec<u32> {
        self.ring.read().map(|r| r.keys.keys().copied().collect()).unwrap_or_default()
    }

    /// Encrypts `plaintext` for the given field with the active key.
    pub fn encrypt(&self, ctx: &FieldContext<'_>, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let ring = self.ring.read().map_err(|_| CryptoError::Encrypt)?;
        let cipher = ring.keys.get(&ring.active).ok_or(CryptoError::UnknownKey(ring.active))?;
        seal(cipher, ring.active, ctx, plaintext)
    }

    /// Decrypts a value stored for the given field, with whichever key encrypted it.
    pub fn decrypt(&self, ctx: &FieldContext<'_>, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let (key_id, header, nonce, ct) = parse(blob)?;
        let ring = self.ring.read().map_err(|_| CryptoError::Decrypt)?;
        let cipher = ring.keys.get(&key_id).ok_or(CryptoError::UnknownKey(key_id))?;
        open(cipher, header, nonce, ct, ctx)
    }

    /// The key id a stored value was encrypted with, without decrypting it.
    pub fn key_id_of(blob: &[u8]) -> Result<u32, CryptoError> {
        parse(blob).map(|(id, ..)| id)
    }
}

/// Why the keyring could not be loaded or extended.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error(
        "the master key does not match this data file (cannot unwrap its data keys); restore the master key that belongs to it"
    )]
    WrongMasterKey,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("{0}")]
    Refused(String),
    #[error("keyring lock poisoned")]
    Poisoned,
}
