//! Argon2id password hashing on a bounded pool of blocking threads.
//!
//! At most `slots` hashes run at once (default: one per core); further requests wait
//! on an async semaphore, so a login flood queues instead of starving the runtime.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use super::CryptoError;
use crate::validate::{ConfigError, bad};

/// `[password]`: argon2id parameters.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordConfig {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Hashes computed at once; the rest wait in line. Defaults to the number of cores.
    pub max_concurrent: Option<usize>,
}

impl Default for PasswordConfig {
    fn default() -> Self {
        PasswordConfig { memory_kib: 19_456, iterations: 2, parallelism: 1, max_concurrent: None }
    }
}

impl PasswordConfig {
    /// Checks what types alone cannot; keys are relative to `[password]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.memory_kib < 19_456 {
            return bad("memory_kib", "must be at least 19456 (OWASP minimum for argon2id)");
        }
        if self.memory_kib > 4 * 1024 * 1024 {
            return bad("memory_kib", "must be at most 4194304 (4 GiB)");
        }
        if !(2..=100).contains(&self.iterations) {
            return bad("iterations", "must be between 2 and 100");
        }
        if !(1..=16).contains(&self.parallelism) {
            return bad("parallelism", "must be between 1 and 16");
        }
        if self.max_concurrent == Some(0) {
            return bad("max_concurrent", "must be at least 1");
        }
        Ok(())
    }
}

/// Hashes and verifies passwords with argon2id (PHC strings).
#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    slots: Arc<Semaphore>,
    /// A hash of a random password, verified against for unknown users so they cost the
    /// same; made on first use so startup does not pay for it.
    dummy: Arc<tokio::sync::OnceCell<String>>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("m_cost", &self.params.m_cost())
            .field("t_cost", &self.params.t_cost())
            .field("p_cost", &self.params.p_cost())
            .field("slots", &self.slots.available_permits())
            .finish()
    }
}

impl PasswordHasher {
    /// A hasher with the configured parameters.
    pub fn new(cfg: &PasswordConfig) -> Result<PasswordHasher, CryptoError> {
        let params = Params::new(cfg.memory_kib, cfg.iterations, cfg.parallelism, None).map_err(CryptoError::from)?;
        let slots =
            cfg.max_concurrent.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
        Ok(PasswordHasher {
            params,
            slots: Arc::new(Semaphore::new(slots)),
            dummy: Arc::new(tokio::sync::OnceCell::new()),
        })
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    fn hash_blocking(&self, password: &[u8]) -> Result<String, CryptoError> {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        self.argon2().hash_password(password, &salt).map(|h| h.to_string()).map_err(CryptoError::from)
    }

    /// Hashes a password into a PHC string, waiting for a free slot.
    pub async fn hash(&self, password: Zeroizing<String>) -> Result<String, CryptoError> {
        // The permit moves into the blocking task: a caller that goes away (a client that hung
        // up) does not free its slot while its hash still runs.
        let permit = self.slots.clone().acquire_owned().await.map_err(|_| CryptoError::Hasher("hasher closed"))?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.hash_blocking(password.as_bytes())
        })
        .await
        .map_err(|_| CryptoError::Hasher("hashing task failed"))?
    }

    /// Verifies a password against a PHC string. `None` (unknown user) verifies against a
    /// dummy hash and returns false, taking the same time as a wrong password.
    pub async fn verify(&self, phc: Option<String>, password: Zeroizing<String>) -> Result<bool, CryptoError> {
        let known = phc.is_some();
        let phc = match phc {
            Some(phc) => phc,
            None => {
                self.dummy.get_or_try_init(|| self.hash(Zeroizing::new(super::random_token::<24>()))).await?.clone()
            }
        };
        let permit = self.slots.clone().acquire_owned().await.map_err(|_| CryptoError::Hasher("hasher closed"))?;
        let this = self.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let parsed = PasswordHash::new(&phc).map_err(CryptoError::from)?;
            Ok::<bool, CryptoError>(this.argon2().verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await
        .map_err(|_| CryptoError::Hasher("hashing task failed"))??;
        Ok(ok && known)
    }

    /// Whether a stored hash was made with other parameters than the configured ones.
    pub fn needs_rehash(&self, phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else { return true };
        if parsed.algorithm.as_str() != "argon2id" || parsed.version != Some(Version::V0x13 as u32) {
            return true;
        }
        match Params::try_from(&parsed) {
            Ok(p) => {
                p.m_cost() != self.params.m_cost()
                    || p.t_cost() != self.params.t_cost()
                    || p.p_cost() != self.params.p_cost()
            }
            Err(_) => true,
        }
    }

    /// How many hashes may run at once.
    pub fn slots(&self) -> usize {
        self.slots.available_permits()
    }
}
