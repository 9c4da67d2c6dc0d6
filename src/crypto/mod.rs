//! Every cryptographic primitive the gate uses: field encryption (keyring),
//! argon2id password hashing, secure random and constant-time comparison.
//! Nothing outside this module calls a cipher directly.

pub mod keyring;
pub mod master_key;
pub mod password;
pub mod sealed;
pub mod sign;

pub use keyring::{FieldContext, Keyring};
pub use master_key::MasterKey;
pub use password::PasswordHasher;

use rand::RngCore;

/// Errors of the crypto layer. They never carry key material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("ciphertext is malformed")]
    Malformed,
    #[error("unsupported ciphertext version {0}")]
    UnsupportedVersion(u8),
    #[error("no key with id {0} in the keyring")]
    UnknownKey(u32),
    #[error("decryption failed: wrong key, wrong context or tampered data")]
    Decrypt,
    #[error("encryption failed")]
    Encrypt,
    #[error("password hashing parameters: {0}")]
    HashParams(#[from] argon2::Error),
    #[error("password hashing failed: {0}")]
    Hash(#[from] argon2::password_hash::Error),
    #[error("password hashing failed: {0}")]
    Hasher(&'static str),
    #[error("{0}")]
    MasterKey(String),
    #[error("key generation failed")]
    KeyGeneration,
}

/// `n` bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    buf
}

/// `n` unpredictable bytes from a per-thread generator seeded by the OS (no system call per
/// use). For identifiers such as request ids, never for keys or tokens.
pub fn id_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    rand::thread_rng().fill_bytes(&mut buf);
    buf
}

/// A random token of `N` bytes, base64url without padding.
pub fn random_token<const N: usize>() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<N>())
}

/// A uniformly drawn index below `n` (not for secrets), e.g. a first server to try.
pub fn random_index(n: usize) -> usize {
    use rand::Rng;
    if n == 0 { 0 } else { rand::thread_rng().gen_range(0..n) }
}

/// Compares two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// SHA-256 digest.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
