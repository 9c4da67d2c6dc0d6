//! The master key file: 32 random bytes, mode 0600, the root of the keyring.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine;
use zeroize::Zeroizing;

use super::{CryptoError, random_bytes};

/// The key-encryption key that wraps every data key in the keyring.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Reads the key file, or creates it (0600, 32 random bytes) when it does not exist.
    /// Refuses a file that group or others may read, or one of the wrong size.
    pub fn load_or_create(path: &Path) -> Result<MasterKey, CryptoError> {
        match Self::load(path) {
            Err(CryptoError::MasterKey(_)) if !path.exists() => Self::create(path),
            other => other,
        }
    }

    /// Reads an existing key file (never creates one: a new key beside existing data would
    /// only lock that data away). Same checks as [`MasterKey::load_or_create`].
    pub fn load(path: &Path) -> Result<MasterKey, CryptoError> {
        match std::fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(CryptoError::MasterKey(format!(
                        "master key file {} is accessible by group or others (mode {mode:04o}); run: chmod 600 {}",
                        path.display(),
                        path.display()
                    )));
                }
                let raw = Zeroizing::new(std::fs::read(path).map_err(|e| {
                    CryptoError::MasterKey(format!("cannot read master key file {}: {e}", path.display()))
                })?);
                Self::from_file_bytes(&raw).ok_or_else(|| {
                    CryptoError::MasterKey(format!(
                        "master key file {} must hold 32 raw bytes or their base64 form",
                        path.display()
                    ))
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(CryptoError::MasterKey(format!("master key file {} is missing", path.display())))
            }
            Err(e) => Err(CryptoError::MasterKey(format!("cannot access master key file {}: {e}", path.display()))),
        }
    }

    fn create(path: &Path) -> Result<MasterKey, CryptoError> {
        let key = Zeroizing::new(random_bytes::<32>());
        let fail = |e: std::io::Error| {
            CryptoError::MasterKey(format!("cannot create master key file {}: {e}", path.display()))
        };
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(fail)?;
        file.write_all(&key[..]).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        tracing::info!(path = %path.display(), "created a new master key; back it up; without it the data file cannot be read");
        Ok(MasterKey(key))
    }

    fn from_file_bytes(raw: &[u8]) -> Option<MasterKey> {
        if raw.len() == 32 {
            let mut key = Zeroizing::new([0u8; 32]);
            key.copy_from_slice(raw);
            return Some(MasterKey(key));
        }
        let text = std::str::from_utf8(raw).ok()?.trim();
        let decoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(text).ok()?);
        if decoded.len() != 32 {
            return None;
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&decoded);
        Some(MasterKey(key))
    }

    /// A key from raw bytes (tests and `keys` tooling).
    pub fn from_bytes(bytes: [u8; 32]) -> MasterKey {
        MasterKey(Zeroizing::new(bytes))
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}
